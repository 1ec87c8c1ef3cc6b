#!/usr/bin/env python3
"""A stand-in for PHP mama's state-file protocol, for mama's tests.

PHP is not installed for the tests; this script does to mama.xml what PHP
mama's src/settings.php and src/machine.php do (read, never copied):

- Its lock is flock(LOCK_EX) on a descriptor opened read-write on the state
  file itself ("r+"), for reads as well as writes; it is re-entrant inside
  one process (a count) and released by closing the descriptor.
- It reads through that descriptor: rewind, read as many bytes as the file
  at the *path* has (filesize), and refuses a short read ("Size mismatch")
  or a text without "</settings>" ("Invalid mama.xml").
- It writes in place through that descriptor: ftruncate to 0, rewind,
  write; the whole document re-indented (DOM's formatOutput).
- Every load first looks for the state file, with no lock held: when
  there is none, it installs PHP mama's mama.xml-default beside it with
  `cp`, `chgrp` and `chmod 660`, three commands through a shell, as
  Settings::load() does with passthru (`cp` to a path that does not exist
  creates it with O_EXCL, and fails if it appeared meanwhile; to a path that
  exists it truncates it and writes the default over it). The group is this
  process's own here (the tests have no group `mama`): the same commands,
  the same time taken.
- Every command loads the file once before it starts (main.php), and so
  creates it when it is missing.
- It saves a machine by deleting it (a save of the file without it), then
  rebuilding the element from its own list of fields at the end of the
  file (a second save): job_timestamp, job_host, job_origin and any child
  it does not know are dropped, an empty start_timeout becomes 240. Every
  save holds the lock across load, change and save.
- `list` saves every machine that has a stored IP (get_status -> set_ip).
- `set` of a machine it does not find says so and exits 0, as
  select_machine() and cmd_set() do; a machine that vanished between its
  load and its save is fatal (Machine::load).
- `new` checks the name with one load and adds the machine with another
  (its own lock), as cmd_new() does.
- A job claim waits until the machine is idle (not started; no job, or a
  job whose PID is dead, which it clears), records job and job_pid, runs,
  and puts back the previous job and PID.

--pause SECONDS sleeps inside the lock, between load and save and between
the two saves of a machine, to widen races. --poll SECONDS is how long a
waiter sleeps with the lock dropped (PHP sleeps 10 s).

Usage: php_mama.py STATE [--pause S] [--poll S] COMMAND ...
  new NAME MAC
  set NAME FIELD VALUE
  list
  job NAME LABEL BUSYDIR HOLD   (the job: mkdir BUSYDIR/NAME, sleep HOLD,
                                 rmdir; a mkdir that fails writes
                                 BUSYDIR/DOUBLE-NAME-PID and fails)
  hold GOFILE                   (take the lock, say "holding", wait for GOFILE)
"""

import fcntl
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

# The fields PHP mama's Settings::add_machine writes, in its order.
FIELDS = [
    "name", "mac", "ip", "is_started", "only_vm", "arch", "os", "kernel",
    "pwr_dev", "pwr_slot", "rly_dev", "rly_slot", "reservation", "resources",
    "boot_params", "vm_params", "job", "job_pid", "startcmd", "stopcmd",
    "start_timeout",
]


def fatal(message):
    sys.stderr.write("php_mama[%d]: FATAL: %s\n" % (os.getpid(), message))
    sys.exit(1)


class Settings:
    def __init__(self, path, pause):
        self.path = path
        self.pause = pause
        self.count = 0
        self.stream = None
        self.root = None

    def lock(self):
        if self.count == 0:
            try:
                self.stream = open(self.path, "r+b")
            except OSError as e:
                fatal("Failed to open mama.xml: %s" % e)
            fcntl.flock(self.stream.fileno(), fcntl.LOCK_EX)
        self.count += 1

    def unlock(self):
        if self.count == 0:
            fatal("mama.xml is not locked")
        self.count -= 1
        if self.count == 0:
            self.stream.close()
            self.stream = None

    def get_contents(self):
        self.lock()
        filesize = os.stat(self.path).st_size
        self.stream.seek(0)
        data = self.stream.read(filesize)
        self.unlock()
        if len(data) != filesize:
            fatal("Size mismatch: %d != %d" % (len(data), os.stat(self.path).st_size))
        if b"</settings>" not in data:
            fatal("Invalid mama.xml: %r" % data[:200])
        return data

    def put_contents(self, data):
        if not data:
            fatal("FATAL: Trying to write an empty mama.xml")
        self.lock()
        self.stream.truncate(0)
        self.stream.seek(0)
        self.stream.write(data)
        self.stream.flush()
        self.unlock()

    def passthru(self, command, failure):
        if subprocess.run(command, shell=True).returncode != 0:
            fatal(failure)

    def install_default(self):
        """Settings::load(): a missing mama.xml is PHP mama's default."""
        if not os.path.exists(self.path):
            default = os.path.join(os.path.dirname(self.path), "mama.xml-default")
            path = shlex.quote(self.path)
            self.passthru("cp %s %s" % (shlex.quote(default), path),
                          "Failed to install the mama.xml file")
            self.passthru("chgrp %d %s" % (os.getegid(), path),
                          "Failed to set permission on mama.xml file")
            self.passthru("chmod 660 %s" % path,
                          "Failed to set permission on mama.xml file")
        if not os.path.exists(self.path):
            fatal("No mama.xml file found")

    def load(self):
        self.install_default()
        data = self.get_contents()
        parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
        try:
            self.root = ET.fromstring(data, parser=parser)
        except ET.ParseError as e:
            fatal("simplexml_load_string: %s" % e)
        return self.root

    def save(self):
        ET.indent(self.root, space="  ")
        text = ET.tostring(self.root, encoding="unicode")
        self.put_contents(('<?xml version="1.0"?>\n' + text + "\n").encode())

    def machines(self):
        return [m for m in self.root if m.tag == "machine"]

    def delete_machine(self, name):
        self.lock()
        self.load()
        found = [m for m in self.machines() if m.findtext("name") == name]
        if not found:
            # PHP would unset machine[FALSE], the first machine: never that.
            fatal("machine %s vanished from mama.xml" % name)
        self.root.remove(found[0])
        self.save()
        self.unlock()

    def add_machine(self, mach):
        self.lock()
        self.load()
        element = ET.SubElement(self.root, "machine")
        for field in FIELDS:
            ET.SubElement(element, field).text = mach.get(field, "")
        self.save()
        self.unlock()

    def update_machine(self, mach):
        self.lock()
        self.delete_machine(mach["name"])
        time.sleep(self.pause)
        self.add_machine(mach)
        self.unlock()


def fill(element):
    mach = {field: element.findtext(field) or "" for field in FIELDS}
    mach["mac"] = mach["mac"].lower()
    if mach["start_timeout"] == "":
        mach["start_timeout"] = "240"
    return mach


def load_machine(settings, mac):
    """Machine::load(): found again by its MAC."""
    settings.load()
    for element in settings.machines():
        if (element.findtext("mac") or "").lower() == mac:
            return fill(element)
    fatal("Failed to load machine")


def select_machine(settings, name):
    """None (having said so) when there is no such machine."""
    settings.load()
    for element in settings.machines():
        if element.findtext("name") == name:
            return fill(element)
    sys.stderr.write("Machine with name/mac %s not found\n" % name)
    return None


def pid_alive(text):
    try:
        pid = int(text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_ancestor(text):
    try:
        pid = int(text)
    except ValueError:
        return False
    me = os.getpid()
    while me > 1:
        if me == pid:
            return True
        try:
            with open("/proc/%d/stat" % me) as f:
                me = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def is_idle(mach):
    if mach["is_started"] == "1":
        return False
    if mach["job"] != "" and not is_ancestor(mach["job_pid"]):
        return False
    return True


def cmd_new(settings, name, mac):
    settings.load()
    if any(m.findtext("name") == name for m in settings.machines()):
        fatal("Name already exists")
    time.sleep(settings.pause)
    mach = {field: "" for field in FIELDS}
    mach.update(name=name, mac=mac.lower(), only_vm="0", pwr_slot="0", rly_slot="0")
    settings.add_machine(mach)


def cmd_set(settings, name, field, value):
    mach = select_machine(settings, name)
    if mach is None:
        return
    settings.lock()
    mach = load_machine(settings, mach["mac"])
    time.sleep(settings.pause)
    mach[field] = value
    settings.update_machine(mach)
    settings.unlock()


def cmd_list(settings):
    settings.load()
    macs = [fill(m)["mac"] for m in settings.machines()]
    for mac in macs:
        settings.lock()
        mach = load_machine(settings, mac)
        if mach["ip"] != "":
            time.sleep(settings.pause)
            settings.update_machine(mach)
        settings.unlock()


def cmd_job(settings, poll, name, label, busydir, hold):
    settings.lock()
    mach = select_machine(settings, name)
    if mach is None:
        fatal("no machine %s" % name)
    mach = load_machine(settings, mach["mac"])
    while not is_idle(mach):
        if mach["job"] != "" and not pid_alive(mach["job_pid"]):
            sys.stderr.write("Detected stale job: %s (PID: %s)\n" % (mach["job"], mach["job_pid"]))
            mach["job"] = ""
            mach["job_pid"] = ""
            settings.update_machine(mach)
            continue
        settings.unlock()
        time.sleep(poll)
        settings.lock()
        mach = load_machine(settings, mach["mac"])
    prev_job, prev_pid = mach["job"], mach["job_pid"]
    mach["job"] = label
    mach["job_pid"] = str(os.getpid())
    time.sleep(settings.pause)
    settings.update_machine(mach)
    settings.unlock()

    failed = False
    mark = os.path.join(busydir, name)
    try:
        os.mkdir(mark)
    except FileExistsError:
        failed = True
        with open(os.path.join(busydir, "DOUBLE-%s-%d" % (name, os.getpid())), "w") as f:
            f.write("php job %s found %s taken\n" % (label, name))
    if not failed:
        time.sleep(hold)
        os.rmdir(mark)

    settings.lock()
    mach = load_machine(settings, mach["mac"])
    mach["job"] = prev_job
    mach["job_pid"] = prev_pid
    settings.update_machine(mach)
    settings.unlock()
    if failed:
        sys.exit(3)


def cmd_hold(settings, go):
    settings.lock()
    sys.stderr.write("holding\n")
    sys.stderr.flush()
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            fatal("no go file")
        time.sleep(0.01)
    settings.unlock()


def main(argv):
    if len(argv) < 2:
        fatal(__doc__)
    path, args = argv[0], argv[1:]
    pause, poll = 0.0, 10.0
    while args and args[0] in ("--pause", "--poll"):
        if args[0] == "--pause":
            pause = float(args[1])
        else:
            poll = float(args[1])
        args = args[2:]
    settings = Settings(path, pause)
    settings.load()
    command, rest = args[0], args[1:]
    if command == "new" and len(rest) == 2:
        cmd_new(settings, *rest)
    elif command == "set" and len(rest) == 3:
        cmd_set(settings, *rest)
    elif command == "list" and not rest:
        cmd_list(settings)
    elif command == "job" and len(rest) == 4:
        cmd_job(settings, poll, rest[0], rest[1], rest[2], float(rest[3]))
    elif command == "hold" and len(rest) == 1:
        cmd_hold(settings, rest[0])
    else:
        fatal("usage: " + __doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
