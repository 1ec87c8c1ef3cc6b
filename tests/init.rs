//! `mama init` and a lab shared by a group: a member uses every command
//! from the first, a lab's first files in a shared folder are open to the
//! group, what another user set up is never loosened without `--force`,
//! and a permission error names what is missing. The second user is
//! `nobody`, in the group `users` (a member) or `nogroup` (not one).

use crate::common::users::*;
use crate::common::*;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A world whose lab is `lab/mama.xml` in its folder, the folder not there
/// yet, and the world's folder open for `nobody` to pass through.
fn world() -> TestEnv {
    let mut env = TestEnv::new();
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    env.state = env.path().join("lab").join("mama.xml");
    env
}

fn lab(env: &TestEnv) -> PathBuf {
    env.path().join("lab")
}

fn beside(env: &TestEnv, name: &str) -> PathBuf {
    lab(env).join(name)
}

/// The group and mode of `path`.
fn group_and_mode(path: &Path) -> (u32, u32) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.gid(), meta.mode() & 0o7777)
}

/// `mama ARGS` as `nobody` in `group` (and no other group).
fn as_member(env: &TestEnv, bin: &Path, group: &str, args: &[&str]) -> Run {
    as_nobody(env, bin, group, args)
        .output()
        .expect("setpriv runs")
        .into()
}

/// `mama ARGS` as a user who owns nothing of the lab, in `nogroup`.
fn as_stranger(env: &TestEnv, bin: &Path, args: &[&str]) -> Run {
    as_user(env, bin, STRANGER, &nobody_group(), args)
        .output()
        .expect("setpriv runs")
        .into()
}

/// Every command a team uses, as a member, on a new machine `name`: each
/// must work.
fn uses_every_command(env: &TestEnv, bin: &Path, group: &str, name: &str) {
    let member = |args: &[&str]| as_member(env, bin, group, args);
    member(&["add", name, "--mac", "aa:bb:cc:dd:ee:99"]).ok();
    member(&["set", name, "os", "fedora"]).ok();
    member(&["run", name, "--", "true"]).ok();
    member(&["reserve", name, "--for", "1h"]).ok();
    assert!(member(&["who"]).ok().contains(name));
    member(&["release", name]).ok();
    member(&["wait", name, "--timeout", "5"]).ok();
    assert_eq!(member(&["get", name, "os"]).ok(), "fedora\n");
    assert!(member(&["list"]).ok().contains(name));
    assert!(member(&["log", name]).ok().contains(name));
    member(&["info", name]).ok();
    member(&["clear", name]).ok();
    member(&["delete", name]).ok();
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn init_sets_a_lab_up_for_its_group_in_one_step_and_again_changes_nothing() {
    second_user();
    let env = world();
    let (group, gid) = other_group();
    let state = env.state.to_string_lossy().into_owned();
    let run = env.run(["init", &state, "--group", &group]);
    let said = run.ok().to_string();
    assert!(said.contains("ready for the group"), "{said}");
    assert_eq!(group_and_mode(&lab(&env)), (gid, 0o2775));
    assert_eq!(group_and_mode(&env.state), (gid, 0o664));
    assert_eq!(group_and_mode(&beside(&env, "mama.xml.lock")), (gid, 0o660));
    assert_eq!(group_and_mode(&beside(&env, "mama.xml.log")), (gid, 0o664));
    assert_eq!(
        group_and_mode(&beside(&env, "mama.xml.locks")),
        (gid, 0o2770)
    );
    // An empty lab, in the original tool's format.
    assert_eq!(env.run(["list", "--names"]).ok(), "");
    assert!(env.read_state().contains("<settings"));
    // Again: nothing changes, and it says so (the state path from
    // MAMA_STATE this time).
    let before = env.read_state();
    let again = env.run(["init"]);
    assert!(again.ok().contains("nothing changed"), "{again:#?}");
    assert_eq!(again.stdout.lines().count(), 1, "{again:#?}");
    assert_eq!(env.read_state(), before);

    let (bin, _bin_dir) = binary_for_nobody(&env, &group);
    uses_every_command(&env, &bin, &group, "rig1");
    // Whatever the member made is the group's too.
    for name in [
        "mama.xml",
        "mama.xml.lock",
        "mama.xml.locks/rig1.lock",
        "mama.xml.log",
    ] {
        assert_eq!(group_and_mode(&beside(&env, name)).0, gid, "{name}");
    }
    // One who is not a member is told so, naming the group, and changes
    // nothing.
    env.add("rig2", 2);
    let before = env.read_state();
    let stranger = |args: &[&str]| as_stranger(&env, &bin, args);
    let why = format!("you are not in the group {group}");
    let told = stranger(&["run", "rig2", "--", "true"])
        .fails_saying(125, &why)
        .to_string();
    // Only root changes a user's groups.
    assert!(
        told.contains("ask the system's administrator to add you"),
        "{told}"
    );
    stranger(&["set", "rig2", "os", "x"]).fails_saying(1, &why);
    stranger(&["reserve", "rig2"]).fails_saying(1, &why);
    assert_eq!(env.read_state(), before);
    // Reading is open to others (the state file is 0664).
    assert!(stranger(&["list"]).ok().contains("rig2"));
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn the_first_add_in_a_shared_folder_makes_files_the_group_may_use() {
    second_user();
    let env = world();
    let (group, gid) = other_group();
    fs::create_dir(lab(&env)).expect("mkdir");
    std::os::unix::fs::chown(lab(&env), None, Some(gid)).expect("chgrp");
    fs::set_permissions(lab(&env), fs::Permissions::from_mode(0o2775)).expect("chmod");
    // Root's first add, with the usual umask (the test runner's).
    env.add("rig1", 1);
    env.run(["run", "rig1", "--", "true"]).ok();
    assert_eq!(group_and_mode(&env.state), (gid, 0o664));
    assert_eq!(group_and_mode(&beside(&env, "mama.xml.lock")), (gid, 0o660));
    assert_eq!(
        group_and_mode(&beside(&env, "mama.xml.locks/rig1.lock")),
        (gid, 0o660)
    );
    let (bin, _bin_dir) = binary_for_nobody(&env, &group);
    as_member(&env, &bin, &group, &["run", "rig1", "--", "true"]).ok();
    as_member(&env, &bin, &group, &["reserve", "rig1"]).ok();
    assert_eq!(env.info("rig1")["reservation"], "nobody");
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn a_member_is_told_what_is_closed_to_the_group_and_init_opens_it() {
    second_user();
    let env = world();
    let (group, gid) = other_group();
    // A lab made before it was shared: a private folder and files...
    fs::create_dir(lab(&env)).expect("mkdir");
    fs::set_permissions(lab(&env), fs::Permissions::from_mode(0o755)).expect("chmod");
    env.add("rig1", 1);
    let (bin, _bin_dir) = binary_for_nobody(&env, &group);
    let member = |args: &[&str]| as_member(&env, &bin, &group, args);
    member(&["run", "rig1", "--", "true"]).fails_saying(
        125,
        "shared with no group: ask root to run `mama init --group GROUP`",
    );
    // ... then given to the group by hand, but for the lock file.
    for path in [lab(&env), env.state.clone()] {
        std::os::unix::fs::chown(&path, None, Some(gid)).expect("chgrp");
    }
    fs::set_permissions(lab(&env), fs::Permissions::from_mode(0o2775)).expect("chmod");
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o664)).expect("chmod");
    let lock = beside(&env, "mama.xml.lock").display().to_string();
    member(&["run", "rig1", "--", "true"]).fails_saying(
        125,
        &format!("{lock} is root's and not open to the group {group}: ask root to run `mama init --group {group}`"),
    );
    // The folder closed, and a lock file to make in it: the folder is
    // named.
    fs::set_permissions(lab(&env), fs::Permissions::from_mode(0o2755)).expect("chmod");
    fs::remove_file(&lock).expect("rm");
    member(&["add", "rig2", "--mac", "aa:bb:cc:dd:ee:02"]).fails_saying(
        1,
        &format!(
            "the lab's folder {} is not open to the group {group}: ask its owner, root, to run \
             `mama init --group {group}`",
            lab(&env).display()
        ),
    );
    // What the messages say, done.
    env.run(["init", "--group", &group]).ok();
    uses_every_command(&env, &bin, &group, "rig9");
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn init_never_loosens_what_another_user_or_group_set_up_without_force() {
    second_user();
    let env = world();
    let (group, gid) = other_group();
    let nobody_uid = user_id("nobody").expect("the user nobody");
    // The folder of nobody, in their own group: root changes it only with
    // --force.
    fs::create_dir(lab(&env)).expect("mkdir");
    fs::set_permissions(lab(&env), fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(lab(&env), Some(nobody_uid), None).expect("chown");
    env.run(["init", "--group", &group]).fails_saying(
        1,
        "was set up by nobody: mama init changes another user's lab only with --force",
    );
    assert_eq!(group_and_mode(&lab(&env)), (0, 0o755));
    assert!(!env.state.exists());
    // A member may not change a folder of root's.
    std::os::unix::fs::chown(lab(&env), Some(0), None).expect("chown");
    let (bin, _bin_dir) = binary_for_nobody(&env, &group);
    as_member(&env, &bin, &group, &["init", "--group", &group]).fails_saying(
        1,
        &format!(
            "{} belongs to root: only root may open it to the group {group}",
            lab(&env).display()
        ),
    );
    assert_eq!(group_and_mode(&lab(&env)), (0, 0o755));
    // Another group's lab is not handed to this one without --force.
    std::os::unix::fs::chown(lab(&env), None, Some(gid)).expect("chgrp");
    let other = nobody_group();
    env.run(["init", "--group", &other]).fails_saying(
        1,
        &format!("belongs to the group {group}: mama init hands it to the group {other} only with --force"),
    );
    assert_eq!(group_and_mode(&lab(&env)), (gid, 0o755));
    let forced = env.run(["init", "--group", &other, "--force"]);
    forced.ok();
    let other_gid = group_id(&other).expect("the group");
    assert_eq!(group_and_mode(&lab(&env)), (other_gid, 0o2775));
    assert_eq!(group_and_mode(&env.state), (other_gid, 0o664));
}

#[test]
fn init_named_a_folder_instead_of_the_state_file_changes_nothing() {
    let env = world();
    // `mama init /var/lib/mama` for `mama init /var/lib/mama/mama.xml`:
    // the folder named is taken for the state file, and the folder above
    // it for the lab's.
    fs::create_dir(lab(&env)).expect("mkdir");
    let gid = group_and_mode(env.path()).0.to_string();
    let (above, folder) = (group_and_mode(env.path()), group_and_mode(&lab(&env)));
    env.run(["init", lab(&env).to_str().expect("path"), "--group", &gid])
        .fails_saying(1, &format!("{} is a folder", lab(&env).display()));
    assert_eq!(group_and_mode(env.path()), above);
    assert_eq!(group_and_mode(&lab(&env)), folder);
    assert_eq!(fs::read_dir(env.path()).expect("list").count(), 1);
}

#[test]
fn init_named_a_file_that_is_not_a_lab_changes_nothing() {
    let env = world();
    fs::create_dir(lab(&env)).expect("mkdir");
    // A private file named by mistake: not handed to the group.
    let notes = beside(&env, "notes.txt");
    fs::write(&notes, "my notes\n").expect("write");
    fs::set_permissions(&notes, fs::Permissions::from_mode(0o600)).expect("chmod");
    let gid = group_and_mode(env.path()).0.to_string();
    let before = (group_and_mode(&lab(&env)), group_and_mode(&notes));
    env.run(["init", notes.to_str().expect("path"), "--group", &gid])
        .fails_saying(1, "notes.txt");
    assert_eq!((group_and_mode(&lab(&env)), group_and_mode(&notes)), before);
    assert_eq!(fs::read_dir(lab(&env)).expect("list").count(), 1);
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn init_follows_no_link_of_another_user_to_a_folder_it_would_open() {
    second_user();
    let env = world();
    let (group, _) = other_group();
    let nobody_uid = user_id("nobody").expect("the user nobody");
    // nobody's folder, and in it their link to where the lab would be in a
    // folder of root's (say /etc): root's init would open that folder to
    // the group, no --force asked, since root owns it.
    let victim = env.path().join("victim");
    fs::create_dir(&victim).expect("mkdir");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::create_dir(lab(&env)).expect("mkdir");
    std::os::unix::fs::chown(lab(&env), Some(nobody_uid), None).expect("chown");
    let link = beside(&env, "mama.xml");
    std::os::unix::fs::symlink(victim.join("mama.xml"), &link).expect("link");
    std::os::unix::fs::lchown(&link, Some(nobody_uid), None).expect("chown the link");
    let to_folder = beside(&env, "folder");
    std::os::unix::fs::symlink(&victim, &to_folder).expect("link");
    std::os::unix::fs::lchown(&to_folder, Some(nobody_uid), None).expect("chown the link");
    for args in [
        vec!["init", "--group", &group],
        vec!["init", "--group", &group, "--force"],
    ] {
        env.run(&args).fails_saying(
            1,
            &format!(
                "{} is a symbolic link that belongs to nobody",
                link.display()
            ),
        );
        assert_eq!(group_and_mode(&victim), (0, 0o755));
        assert_eq!(fs::read_dir(&victim).expect("list").count(), 0);
    }
    // Nor is a folder made through it.
    let deeper = to_folder.join("sub").join("mama.xml");
    env.run(["init", deeper.to_str().expect("path"), "--group", &group])
        .fails_saying(1, "is a symbolic link that belongs to nobody");
    assert_eq!(fs::read_dir(&victim).expect("list").count(), 0);
    // Root's own link is followed, as every command follows it.
    fs::remove_file(&link).expect("remove");
    std::os::unix::fs::symlink(victim.join("mama.xml"), &link).expect("link");
    env.run(["init", "--group", &group]).ok();
    assert_eq!(group_and_mode(&victim).1, 0o2775);
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn init_needs_a_shared_group_of_the_callers_and_leaves_nothing_when_refused() {
    second_user();
    let env = world();
    // Root's own group is private: a group must be named, before anything
    // is made.
    env.run(["init"]).fails_saying(
        1,
        "the group root, your own: name the group that is to share the lab with --group GROUP",
    );
    assert!(!lab(&env).exists());
    env.run(["init", "--group", "no-such-group-of-mama"])
        .fails_saying(1, "there is no group no-such-group-of-mama");
    assert!(!lab(&env).exists());
    // Only a member sets a lab up for a group.
    let (group, _) = other_group();
    fs::create_dir(lab(&env)).expect("mkdir");
    fs::set_permissions(lab(&env), fs::Permissions::from_mode(0o777)).expect("chmod");
    let (bin, _bin_dir) = binary_for_nobody(&env, &nobody_group());
    as_member(&env, &bin, &nobody_group(), &["init", "--group", &group])
        .fails_saying(1, &format!("you are not a member of the group {group}"));
    assert_eq!(fs::read_dir(lab(&env)).expect("list").count(), 0);
}

#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn init_creates_a_database_labs_tables_and_grants_its_users() {
    let env = TestEnv::postgres();
    let db = env.db.clone().expect("a database lab");
    env.run(["list"]).fails_saying(1, "no lab at");
    let run = env.run(["init"]);
    let said = run.ok().to_string();
    assert!(said.contains("created the lab's tables"), "{said}");
    assert!(
        said.contains("GRANT SELECT, INSERT, UPDATE, DELETE ON mama_machine TO ROLE;"),
        "{said}"
    );
    assert_eq!(env.run(["list", "--names"]).ok(), "");
    // A role of the lab's, given what it needs, uses every command.
    let role = format!("init_user_{}", std::process::id());
    db.batch(&format!("CREATE ROLE \"{role}\" LOGIN"));
    let as_role = |args: &[&str]| {
        let mut cmd = env.cmd(args);
        cmd.env(
            "MAMA_STATE",
            db.url.replacen("mama@", &format!("{role}@"), 1),
        );
        Run::from(cmd.output().expect("mama runs"))
    };
    as_role(&["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"]).fails(1);
    let granted = env.run(["init", "--grant", &role]);
    assert!(
        granted.ok().contains(&format!("granted {role}")),
        "{granted:#?}"
    );
    as_role(&["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"]).ok();
    as_role(&["run", "rig1", "--", "true"]).ok();
    as_role(&["reserve", "rig1"]).ok();
    as_role(&["release", "rig1"]).ok();
    assert!(as_role(&["list"]).ok().contains("rig1"));
    assert!(as_role(&["log"]).ok().contains("rig1"));
    as_role(&["delete", "rig1"]).ok();
    // Again: nothing changes.
    let again = env.run(["init", "--grant", &role]);
    assert!(again.ok().contains("nothing changed"), "{again:#?}");
    db.batch(&format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM \"{role}\";
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM \"{role}\";
         DROP ROLE \"{role}\";"
    ));
}

#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn init_grants_a_role_the_schema_of_a_lab_outside_public() {
    let env = TestEnv::postgres();
    let db = env.db.clone().expect("a database lab");
    // The lab in a schema of its own (the first of everyone's search_path).
    db.batch(&format!(
        "CREATE SCHEMA lab2; ALTER DATABASE \"{}\" SET search_path = lab2",
        db.name
    ));
    let printed = env.run(["init"]);
    let role = format!("init_schema_user_{}", std::process::id());
    db.batch(&format!("CREATE ROLE \"{role}\" LOGIN"));
    let as_role = |args: &[&str]| {
        let mut cmd = env.cmd(args);
        cmd.env(
            "MAMA_STATE",
            db.url.replacen("mama@", &format!("{role}@"), 1),
        );
        Run::from(cmd.output().expect("mama runs"))
    };
    let granted = env.run(["init", "--grant", &role]);
    let added = as_role(&["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"]);
    let listed = as_role(&["list", "--names"]);
    let again = env.run(["init", "--grant", &role]);
    // The role goes whatever happened (roles are the server's, not the
    // database's).
    db.batch(&format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA lab2 FROM \"{role}\";
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA lab2 FROM \"{role}\";
         REVOKE ALL ON SCHEMA lab2 FROM \"{role}\";
         DROP ROLE \"{role}\";"
    ));
    assert!(
        printed
            .ok()
            .contains("GRANT USAGE ON SCHEMA \"lab2\" TO ROLE;"),
        "{printed:#?}"
    );
    granted.ok();
    added.ok();
    assert_eq!(listed.ok(), "rig1\n");
    assert!(again.ok().contains("nothing changed"), "{again:#?}");
}
