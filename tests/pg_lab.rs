//! The database lab: what only it has (schema, URL, sessions), on a real
//! PostgreSQL server the tests start.

mod common;

use common::*;

#[test]
fn smoke() {
    let env = TestEnv::postgres();
    env.run(["list"]).ok();
    env.add("rig1", 1);
    env.add("rig2", 2);
    let out = env.run(["list"]);
    println!("{out:#?}");
    let out = env.run(["run", "rig1", "--", "sh", "-c", "echo $MAMA_STATE; mama list 2>&1 || true"]);
    println!("{out:#?}");
    let out = env.run(["info", "rig1"]);
    println!("{out:#?}");
    let out = env.run(["export"]);
    println!("{out:#?}");
    let out = env.run(["log"]);
    println!("{out:#?}");
}
