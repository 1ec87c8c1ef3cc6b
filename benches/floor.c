/*
 * The physical floor of `mama run MACHINE -- true`: what any tool that
 * keeps the lab in one file must do, and nothing more. Twice (the claim,
 * then the release): take the lock (flock), read the whole state file,
 * write it whole to a temporary file in the same folder, fsync it, rename
 * it over the state file, fsync the folder, unlock. Between the two, run
 * `true` and wait for it, as the run runs its command. No parsing, no
 * change: the bytes written are the bytes read.
 *
 * Usage: floor STATE LOCKFILE. Built by benches/mama.rs with `cc -O2`.
 */
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void transaction(const char *state, const char *temp, const char *dir, const char *lockfile) {
    int lock = open(lockfile, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock < 0 || flock(lock, LOCK_EX) != 0)
        die("lock");
    int in = open(state, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        die("open the state");
    struct stat st;
    if (fstat(in, &st) != 0)
        die("stat the state");
    char *buf = malloc(st.st_size + 1);
    if (!buf)
        die("malloc");
    ssize_t got = 0, n;
    while ((n = read(in, buf + got, st.st_size + 1 - got)) > 0)
        got += n;
    if (n < 0)
        die("read");
    close(in);
    int out = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0)
        die("create the temporary file");
    for (ssize_t done = 0; done < got; done += n)
        if ((n = write(out, buf + done, got - done)) < 0)
            die("write");
    if (fsync(out) != 0)
        die("fsync");
    close(out);
    if (rename(temp, state) != 0)
        die("rename");
    int d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d < 0 || fsync(d) != 0)
        die("fsync the folder");
    close(d);
    free(buf);
    close(lock);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: floor STATE LOCKFILE\n");
        return 2;
    }
    const char *state = argv[1];
    char *copy = strdup(state);
    if (!copy)
        die("strdup");
    const char *dir = dirname(copy);
    char temp[4096];
    snprintf(temp, sizeof temp, "%s/.floor.tmp", dir);
    transaction(state, temp, dir, argv[2]);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        execlp("true", "true", (char *)NULL);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("run true");
    transaction(state, temp, dir, argv[2]);
    return 0;
}
