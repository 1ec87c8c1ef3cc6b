//! The machine document's tests: reading and writing it, damaged files, and
//! lazily read labs held to the eagerly read tree.

use super::XmlLab;
use crate::model::Lab;

/// The text of `xml` after `change` ran on its lab and was replayed, as
/// written (proven to read back).
fn changed(xml: &str, change: impl FnOnce(&mut Lab)) -> String {
    let mut doc = XmlLab::parse(xml).unwrap();
    let mut lab = doc.model();
    change(&mut lab);
    doc.apply(lab.changes()).unwrap();
    doc.render().unwrap().concat()
}

mod reading_and_writing {
    use super::super::*;
    use super::changed;
    use crate::model::JobRecord;
    use crate::model::NewMachine;

    const UPSTREAM: &str = "<?xml version=\"1.0\"?>\n<settings>\n  <resource><name>pdu</name></resource>\n  <machine>\n    <name>rig1</name>\n    <mac>aa:bb:cc:dd:ee:01</mac>\n    <ip/>\n    <job>run smoke</job>\n    <job_pid>12345</job_pid>\n    <job_timestamp>1763047845</job_timestamp>\n    <startcmd/>\n    <custom a=\"1\">keep</custom>\n  </machine>\n</settings>\n";

    #[test]
    fn reads_the_upstream_job_fields() {
        let lab = XmlLab::parse(UPSTREAM).unwrap().model();
        let job = lab.get("rig1").unwrap().job().unwrap();
        assert_eq!(job.label, "run smoke");
        assert_eq!(job.pid, Some(12345));
        assert_eq!(job.timestamp, Some(1763047845));
        assert_eq!(job.host, None);
    }

    #[test]
    fn a_job_host_is_added_in_place_and_removed_on_release() {
        let xml = changed(UPSTREAM, |lab| {
            let mut m = lab.get_mut("rig1").unwrap();
            m.set_job(&JobRecord {
                label: "x".into(),
                pid: Some(1),
                timestamp: Some(2),
                user: None,
                host: Some("h".into()),
                origin: None,
            })
            .unwrap();
        });
        assert!(
            xml.contains(
                "<job_timestamp>2</job_timestamp>\n    <job_host>h</job_host>\n    <startcmd/>"
            ),
            "{xml}"
        );
        let xml = changed(&xml, |lab| {
            lab.get_mut("rig1").unwrap().clear_job().unwrap();
        });
        let cleared = UPSTREAM
            .replace("<job>run smoke</job>", "<job/>")
            .replace("<job_pid>12345</job_pid>", "<job_pid/>")
            .replace(
                "<job_timestamp>1763047845</job_timestamp>",
                "<job_timestamp/>",
            );
        assert_eq!(xml, cleared);
    }

    #[test]
    fn a_machine_holding_carriage_returns_reads_alike_once_built() {
        let text = "<settings>\r\n  <machine>\r\n    <name>a</name>\r\n    <ip>x\r\ny</ip>\r\n  </machine>\r\n</settings>\r\n";
        let mut lab = XmlLab::parse(text).unwrap();
        assert_eq!(lab.model().get("a").unwrap().get(Field::Ip), "x\ny");
        // A change builds the skimmed machine from its text.
        let mut model = lab.take_model();
        model.get_mut("a").unwrap().set(Field::Os, "z").unwrap();
        lab.apply(model.changes()).unwrap();
        let built = lab.model();
        assert_eq!(built.get("a").unwrap().get(Field::Ip), "x\ny");
        assert_eq!(built.get("a").unwrap().get(Field::Os), "z");
        let written = lab.render().unwrap().concat();
        assert!(written.contains("<ip>x\r\ny</ip>"), "{written}");
        let again = XmlLab::parse(&written).unwrap().model();
        assert_eq!(again.get("a").unwrap().get(Field::Ip), "x\ny");
    }

    #[test]
    fn top_level_elements_are_found_after_every_change() {
        // Two <event_seq>: the first counts, as for the tree.
        let text = "<settings>\n  <machine><name>a</name></machine>\n  <machine><name>b</name></machine>\n  <event_seq>3</event_seq>\n  <event_seq>9</event_seq>\n</settings>\n";
        let mut lab = XmlLab::parse(text).unwrap();
        let tags = [
            "event_seq",
            "journal_folded",
            "pending_events",
            "php_compat",
        ];
        let same_as_read = |lab: &XmlLab| {
            let again = XmlLab::parse_eager(&lab.to_xml()).unwrap();
            for tag in tags {
                assert_eq!(
                    lab.top_level(tag),
                    again.top_level(tag),
                    "{tag}: {}",
                    lab.to_xml()
                );
            }
        };
        let seq = |lab: &XmlLab| lab.top_level("event_seq");
        assert_eq!(seq(&lab).as_deref(), Some("3"));
        assert_eq!(lab.top_level("journal_folded"), None);
        same_as_read(&lab);
        // Added, then found again.
        lab.set_top_level("journal_folded", "t1");
        assert_eq!(lab.top_level("journal_folded").as_deref(), Some("t1"));
        lab.set_top_level("journal_folded", "t2");
        assert_eq!(lab.top_level("journal_folded").as_deref(), Some("t2"));
        same_as_read(&lab);
        // A machine and its line taken out before them: the first
        // <event_seq> moves to where the second stood.
        let mut model = lab.take_model();
        model.remove("a").unwrap();
        lab.apply(model.changes()).unwrap();
        assert_eq!(seq(&lab).as_deref(), Some("3"));
        same_as_read(&lab);
        // A machine put in before them.
        let mut model = lab.model();
        model
            .add(&NewMachine {
                name: "c".into(),
                mac: "02:00:00:00:00:01".into(),
                ip: String::new(),
                only_vm: false,
                resources: String::new(),
            })
            .unwrap();
        lab.apply(model.changes()).unwrap();
        assert_eq!(seq(&lab).as_deref(), Some("3"));
        same_as_read(&lab);
        lab.set_top_level("pending_events", "{}\n");
        lab.set_top_level("event_seq", "4");
        assert_eq!(seq(&lab).as_deref(), Some("4"));
        same_as_read(&lab);
        lab.remove_top_level("pending_events");
        lab.remove_top_level("journal_folded");
        assert_eq!(lab.top_level("pending_events"), None);
        assert_eq!(lab.top_level("journal_folded"), None);
        assert_eq!(seq(&lab).as_deref(), Some("4"));
        same_as_read(&lab);
    }

    #[test]
    fn two_machines_of_one_name_are_refused_however_written() {
        let lab = |names: &[&str]| {
            let machines: String = names
                .iter()
                .map(|name| format!("\n  <machine>\n    {name}\n    <os>x</os>\n  </machine>"))
                .collect();
            format!("<?xml version=\"1.0\"?>\n<settings>{machines}\n</settings>\n")
        };
        let refused = |names: &[&str], name: &str| {
            let text = lab(names);
            for read in [XmlLab::parse(&text), XmlLab::parse_eager(&text)] {
                let err = read.expect_err(&text);
                assert_eq!(
                    err.message,
                    format!("two machines are named '{name}'"),
                    "{text}"
                );
            }
        };
        let taken = |names: &[&str]| {
            let text = lab(names);
            assert!(XmlLab::parse(&text).is_ok(), "{text}");
            assert!(XmlLab::parse_eager(&text).is_ok(), "{text}");
        };
        refused(&["<name>a</name>", "<name>b</name>", "<name>a</name>"], "a");
        // Written with references, by the fast path's and by the reader's.
        refused(&["<name>a&amp;b</name>", "<name>a&amp;b</name>"], "a&b");
        refused(&["<name>a&amp;b</name>", "<name>a&#38;b</name>"], "a&b");
        refused(&["<name>a&#38;b</name>", "<name>a&amp;b</name>"], "a&b");
        // A machine's first name is its name.
        refused(&["<name>b</name><name>a</name>", "<name>b</name>"], "b");
        taken(&["<name>a</name><name>b</name>", "<name>b</name>"]);
        // Machines without a name, or with an empty one, are no clash.
        taken(&[
            "<name/>",
            "<name></name>",
            "<os/>",
            "<os/>",
            "<name>ab</name>",
            "<name>a</name>",
        ]);
        // Among many, the last and the first.
        let many: Vec<String> = (0..2000).map(|n| format!("<name>m{n}</name>")).collect();
        let mut names: Vec<&str> = many.iter().map(String::as_str).collect();
        taken(&names);
        names.push("<name>m0</name>");
        refused(&names, "m0");
    }

    #[test]
    fn writing_the_same_value_changes_nothing() {
        let xml = changed(UPSTREAM, |lab| {
            lab.get_mut("rig1")
                .unwrap()
                .set(Field::Job, "run smoke")
                .unwrap();
            assert!(!lab.is_changed());
        });
        assert_eq!(xml, UPSTREAM);
    }

    #[test]
    fn a_field_holding_elements_is_not_overwritten() {
        let xml = UPSTREAM.replace("<startcmd/>", "<startcmd><a/></startcmd>");
        let mut lab = XmlLab::parse(&xml).unwrap().model();
        let err = lab
            .get_mut("rig1")
            .unwrap()
            .set(Field::StartCmd, "x")
            .unwrap_err();
        assert!(err.to_string().contains("holds elements"), "{err}");
        assert!(!lab.is_changed());
    }

    #[test]
    fn added_machines_follow_the_last_machine_with_every_upstream_field() {
        let xml = changed(UPSTREAM, |lab| {
            lab.add(&NewMachine {
                name: "rig2".into(),
                mac: "aa:bb:cc:dd:ee:02".into(),
                ..Default::default()
            })
            .unwrap();
        });
        let again = XmlLab::parse(&xml).unwrap().model();
        let names: Vec<_> = again.machines().map(Machine::name).collect();
        assert_eq!(names, ["rig1", "rig2"]);
        assert!(xml.contains("  </machine>\n  <machine>\n    <name>rig2</name>\n    <mac>aa:bb:cc:dd:ee:02</mac>\n    <ip/>\n    <is_started/>\n    <only_vm>0</only_vm>"), "{xml}");
        assert!(
            xml.ends_with("<start_timeout/>\n  </machine>\n</settings>\n"),
            "{xml}"
        );
        assert!(xml.contains("<custom a=\"1\">keep</custom>"));
        // Removed, with its line.
        let xml = changed(&xml, |lab| lab.remove("rig2").unwrap());
        assert_eq!(xml, UPSTREAM);
    }

    #[test]
    fn duplicates_and_foreign_roots_are_refused() {
        assert!(XmlLab::parse("<settings><machine><name>a</name></machine><machine><name>a</name></machine></settings>")
            .unwrap_err()
            .message
            .contains("two machines"));
        assert!(
            XmlLab::parse("<config/>")
                .unwrap_err()
                .message
                .contains("not a mama state file")
        );
    }
}

mod damaged_file_tests {
    use super::super::*;

    const UPSTREAM: &str = include_str!("../../../testdata/upstream.xml");

    /// Damages `text` the ways files get damaged: bytes flipped, cut short,
    /// markup characters dropped in, lines duplicated.
    fn damage(text: &str, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut bytes = text.as_bytes().to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % bytes.len().max(1);
            match next() % 5 {
                0 => bytes.truncate(at),
                1 => {
                    let last = bytes.len() - 1;
                    bytes[at.min(last)] = (next() % 256) as u8;
                }
                2 => bytes.insert(at, b"<&>\"']/"[(next() % 7) as usize]),
                3 => {
                    let end = (at + (next() as usize % 64)).min(bytes.len());
                    let piece = bytes[at..end].to_vec();
                    bytes.splice(at..at, piece);
                }
                _ => {
                    let end = (at + (next() as usize % 16)).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        bytes
    }

    #[test]
    fn damaged_files_never_panic_and_what_reads_writes_back_stably() {
        let mut read = 0;
        for seed in 0..3000u64 {
            let bytes = damage(UPSTREAM, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let lazy = XmlLab::parse(text);
            // The lazy reading refuses what the tree refuses, saying the same.
            match (&lazy, XmlLab::parse_eager(text)) {
                (Ok(lazy), Ok(eager)) => {
                    let machines =
                        |lab: &XmlLab| lab.model().machines().cloned().collect::<Vec<_>>();
                    assert_eq!(machines(lazy), machines(&eager), "seed {seed}");
                }
                (Err(a), Err(b)) => assert_eq!(a, &b, "seed {seed}"),
                (a, b) => panic!("seed {seed}: lazy {:?}, eager {:?}", a.is_ok(), b.is_ok()),
            }
            if let Ok(mut doc) = lazy {
                read += 1;
                // Unchanged, a lab writes back the very text it was read from.
                let lab = doc.model();
                doc.apply(lab.changes()).unwrap();
                assert_eq!(doc.to_xml(), text, "seed {seed}");
                for machine in lab.machines() {
                    let _ = (machine.job(), machine.resources(), machine.is_started());
                }
            }
        }
        assert!(read > 100, "only {read} damaged files were still readable");
    }
}

/// The lazy reading (machines skimmed, the plain-file scanner, the proof of
/// only what changed) held to the eager tree it replaces: random labs read
/// alike, and random edits write the same file.
mod lazy_tests {
    use super::super::*;
    use crate::model::JobRecord;
    use crate::model::NewMachine;
    use crate::model::event::{Event, Kind};
    use crate::model::queue::Waiter;

    /// A small deterministic generator (xorshift64*), so failures replay.
    struct Prng(u64);

    impl Prng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }

        /// True one time in `n`.
        fn one_in(&mut self, n: usize) -> bool {
            self.below(n) == 0
        }
    }

    /// Field contents as files hold them: plain (the scanner's), and what
    /// sends the reading to the general reader.
    const CONTENTS: &[&str] = &[
        "",
        "",
        "plain",
        "x86_64",
        "console=ttyS0,115200",
        "a &amp; b",
        "&lt;tag&gt; &quot;q&quot; &apos;a&apos;",
        "é ✓ 𝄞",
        "two\nlines",
        " padded ",
        "&#233;&#x41;",
        "cr\r\nlf",
        "<![CDATA[<raw & stuff>]]>",
        "a<!-- note -->b",
        "t<sub>u</sub>v",
        "<sub/>",
        "x > y",
        "<?pi data?>",
    ];

    const WHITE: &[&str] = &["\n  ", "\n  ", "\n\t", " ", "", "\n\n  ", "\r\n  "];

    fn machine(rng: &mut Prng, n: usize, out: &mut String) {
        let indent = rng.pick(&["\n    ", "\n    ", "\n\t\t", ""]);
        out.push_str("<machine>");
        let mut fields: Vec<&str> = Field::ALL.iter().map(|f| f.tag()).collect();
        if rng.one_in(3) {
            fields.retain(|_| !rng.one_in(4));
        }
        if rng.one_in(5) {
            let at = rng.below(fields.len() + 1);
            fields.insert(at, rng.pick(&["custom", "os", "extra"]));
        }
        if rng.one_in(4) {
            let (a, b) = (rng.below(fields.len()), rng.below(fields.len()));
            fields.swap(a, b);
        }
        for tag in fields {
            out.push_str(indent);
            if rng.one_in(30) {
                out.push_str("<!-- c -->");
            }
            let content = match tag {
                "name" if rng.one_in(6) => format!("m&amp;{n}"),
                // Now and then a name another machine has too.
                "name" if rng.one_in(40) => "m0".to_string(),
                "name" => format!("m{n}"),
                "mac" => format!("aa:bb:cc:dd:{:02x}:{:02x}", n / 256 % 256, n % 256),
                _ => rng.pick(CONTENTS).to_string(),
            };
            if content.is_empty() && rng.one_in(2) {
                out.push_str(&format!("<{tag}/>"));
            } else if tag == "custom" && rng.one_in(2) {
                out.push_str(&format!("<{tag} a=\"1\">{content}</{tag}>"));
            } else {
                out.push_str(&format!("<{tag}>{content}</{tag}>"));
            }
        }
        out.push_str(indent.get(..indent.len().saturating_sub(2)).unwrap_or(""));
        out.push_str("</machine>");
    }

    /// A random state file: mostly plain, now and then with what only the
    /// general reader takes.
    fn random_lab(rng: &mut Prng) -> String {
        let mut out = String::new();
        if rng.one_in(20) {
            out.push('\u{feff}');
        }
        out.push_str(rng.pick(&[
            "<?xml version=\"1.0\"?>\n",
            "<?xml version=\"1.0\"?>\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "",
            "<?xml version='1.0'?>\n<!-- lab -->\n",
        ]));
        out.push_str(if rng.one_in(15) {
            "<settings version=\"2\">"
        } else {
            "<settings>"
        });
        let machines = rng.below(8);
        for n in 0..machines {
            out.push_str(rng.pick(WHITE));
            match rng.below(25) {
                0 => out.push_str("<resource><name>pdu</name></resource>"),
                1 => out.push_str("<!-- top -->"),
                2 => out.push_str("<machine/>"),
                3 => out.push_str("<machine><mac>00:11</mac></machine>"),
                _ => {}
            }
            out.push_str(rng.pick(WHITE));
            machine(rng, n, &mut out);
        }
        if rng.one_in(3) {
            out.push_str("\n  <event_seq>7</event_seq>");
        }
        if rng.one_in(4) {
            out.push_str("\n  <pending_events>{\"seq\":7,\"time\":1,\"machine\":\"m0\",\"event\":\"set\",\"job\":null,\"pid\":null,\"user\":\"u\",\"host\":\"h\",\"detail\":\"os=a&amp;b\"}\n</pending_events>");
        }
        out.push_str(rng.pick(&["\n", "", "\n  "]));
        out.push_str("</settings>");
        out.push_str(rng.pick(&["\n", "", "\n\n", "\n<!-- end -->\n"]));
        out
    }

    const VALUES: &[&str] = &[
        "",
        "fedora",
        "a & b",
        "<x>",
        "q\"'",
        "]]>",
        "cr\rhere",
        "two\nlines",
        "é",
        "  spaced  ",
    ];

    /// Random changes a transaction makes, through the model.
    fn random_changes(rng: &mut Prng, lab: &mut Lab, added: &mut usize) {
        for _ in 0..rng.below(6) {
            let names: Vec<String> = lab.machines().map(|m| m.name().to_string()).collect();
            let name = names
                .get(rng.below(names.len().max(1)))
                .cloned()
                .unwrap_or_default();
            let field = Field::ALL[rng.below(Field::ALL.len())];
            let _ = match rng.below(9) {
                0 | 1 => lab
                    .get_mut(&name)
                    .and_then(|mut m| m.set(field, rng.pick(VALUES))),
                2 => lab.get_mut(&name).and_then(|mut m| m.clear(field)),
                3 => lab.get_mut(&name).and_then(|mut m| {
                    m.set_job(&JobRecord {
                        label: rng.pick(VALUES).to_string(),
                        pid: Some(rng.below(100_000) as u32 + 1),
                        timestamp: Some(1_700_000_000),
                        user: rng.one_in(2).then(|| "user".to_string()),
                        host: rng.one_in(2).then(|| "host".to_string()),
                        origin: None,
                    })
                }),
                4 => lab.get_mut(&name).and_then(|mut m| m.clear_job()),
                5 => {
                    *added += 1;
                    lab.add(&NewMachine {
                        name: format!("new{added}"),
                        mac: format!("02:00:00:00:{:02x}:{:02x}", *added / 256, *added % 256),
                        ip: String::new(),
                        only_vm: rng.one_in(2),
                        resources: String::new(),
                    })
                }
                6 => lab.get_mut(&name).and_then(|mut m| {
                    let waiters: Vec<Waiter> = (0..rng.below(3))
                        .map(|i| Waiter {
                            ticket: i as u64 + 1,
                            token: format!("{:016x}", rng.next()),
                            pid: rng.below(100_000) as u32 + 1,
                            since: 1_700_000_000,
                            user: rng.pick(VALUES).to_string(),
                            host: "host".into(),
                            job: rng.one_in(2).then(|| rng.pick(VALUES).to_string()),
                            epoch: None,
                            pool: rng.one_in(2),
                        })
                        .collect();
                    m.set_queue(&waiters)
                }),
                7 => {
                    // `import`: a machine as its element, kept whole.
                    *added += 1;
                    let mut text = String::new();
                    machine(rng, 10_000 + *added, &mut text);
                    let one = XmlLab::parse(&format!("<settings>{text}</settings>")).unwrap();
                    let (name, element) = one.machine_texts().remove(0);
                    assert_eq!(element, text);
                    let model = one.model().get(&name).unwrap().clone();
                    lab.add_element(model, element)
                }
                _ => lab.remove(&name),
            };
        }
    }

    /// What main's backends read beside the model (export, import, the
    /// database's machine elements) reads alike, lazily and from the tree.
    fn same_parts(lazy: &XmlLab, eager: &XmlLab, what: &str) {
        assert_eq!(lazy.machine_texts(), eager.machine_texts(), "{what}");
        assert_eq!(lazy.skeleton(), eager.skeleton(), "{what}");
        assert_eq!(lazy.exported(), eager.exported(), "{what}");
        for (name, text) in eager.machine_texts() {
            assert_eq!(
                lazy.machine_text(&name),
                eager.machine_text(&name),
                "{what}"
            );
            if !name.is_empty() {
                assert_eq!(lazy.machine_text(&name), Some(text), "{what}");
            }
        }
    }

    #[test]
    fn random_labs_read_lazily_as_the_tree_reads_them() {
        let mut rng = Prng(0x9E37_79B9_7F4A_7C15);
        let mut plain = 0;
        for round in 0..1000 {
            let text = random_lab(&mut rng);
            let lazy = XmlLab::parse(&text);
            let eager = XmlLab::parse_eager(&text);
            match (lazy, eager) {
                (Ok(lazy), Ok(eager)) => {
                    let machines =
                        |lab: &XmlLab| lab.model().machines().cloned().collect::<Vec<_>>();
                    assert_eq!(machines(&lazy), machines(&eager), "round {round}: {text}");
                    assert_eq!(lazy.to_xml(), text, "round {round}");
                    assert_eq!(lazy.render().unwrap().concat(), text, "round {round}");
                    for tag in BOOKKEEPING {
                        assert_eq!(lazy.top_level(tag), eager.top_level(tag));
                    }
                    same_parts(&lazy, &eager, &format!("round {round}: {text}"));
                    // The database backend keeps each machine's element
                    // apart, and reads the lab back from them.
                    let texts = lazy.machine_texts();
                    if texts.iter().all(|(name, _)| !name.is_empty()) {
                        let apart = XmlLab::from_machines(
                            texts.iter().map(|(n, t)| (n.as_str(), t.as_str())),
                        )
                        .unwrap_or_else(|e| panic!("round {round}: {e}: {text}"));
                        assert_eq!(machines(&apart), machines(&lazy), "round {round}: {text}");
                        let whole = XmlLab::assemble(
                            Some(&lazy.skeleton()),
                            texts.iter().map(|(n, t)| (n.as_str(), t.as_str())),
                        )
                        .unwrap();
                        assert_eq!(machines(&whole), machines(&lazy), "round {round}");
                        assert!(whole.render().is_ok(), "round {round}");
                    }
                    if lazy
                        .doc
                        .root
                        .children
                        .iter()
                        .any(|n| matches!(n, Node::Lazy(_)))
                    {
                        plain += 1;
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "round {round}: {text}"),
                (a, b) => panic!(
                    "round {round}: lazy {:?}, eager {:?}: {text}",
                    a.err(),
                    b.err()
                ),
            }
        }
        assert!(plain > 250, "only {plain} labs had skimmed machines");
    }

    #[test]
    fn random_edits_write_what_the_tree_writes() {
        let mut rng = Prng(0xDEAD_BEEF_CAFE_F00D);
        let mut added = 0;
        let mut edited = 0;
        for round in 0..400 {
            let text = random_lab(&mut rng);
            let (Ok(mut lazy), Ok(mut eager)) = (XmlLab::parse(&text), XmlLab::parse_eager(&text))
            else {
                continue;
            };
            // Several transactions in a row, each read from the last's text.
            for step in 0..3 {
                // As a transaction takes it: the machines handed over.
                let mut lab = lazy.take_model();
                random_changes(&mut rng, &mut lab, &mut added);
                lazy.apply(lab.changes()).unwrap();
                eager.apply(lab.changes()).unwrap();
                if rng.one_in(2) {
                    let seq = rng.below(1000) as u64;
                    lazy.set_top_level("event_seq", &seq.to_string());
                    eager.set_top_level("event_seq", &seq.to_string());
                }
                if rng.one_in(3) {
                    let events: Vec<Event> = (0..rng.below(3))
                        .map(|i| Event::new(Kind::Set, "m0").detail(format!("os=<{i}>&")))
                        .collect();
                    match events.is_empty() {
                        true => {
                            lazy.remove_top_level("pending_events");
                            eager.remove_top_level("pending_events");
                        }
                        false => {
                            let text = crate::model::event::encode(&events).unwrap();
                            lazy.set_top_level("pending_events", &text);
                            eager.set_top_level("pending_events", &text);
                        }
                    }
                }
                let want = eager.to_xml();
                if let Err(refused) = XmlLab::parse_eager(&want) {
                    // (A random rename may give two machines one name.)
                    let err = lazy.render().err();
                    assert_eq!(err, Some(refused), "round {round}.{step}: {want}");
                    break;
                }
                let got = lazy
                    .render()
                    .unwrap_or_else(|e| panic!("round {round}.{step}: {e}: {want}"))
                    .concat();
                assert_eq!(got, want, "round {round}.{step}: from {text}");
                // What the next transaction compares the file with.
                assert!(lazy.rendered_by(&mut got.as_bytes()).unwrap());
                let mut other = got.clone().into_bytes();
                other.push(b'\n');
                assert!(!lazy.rendered_by(&mut other.as_slice()).unwrap());
                let at = rng.below(other.len() - 1);
                other.pop();
                other[at] ^= 1;
                assert!(!lazy.rendered_by(&mut other.as_slice()).unwrap());
                // What was written reads back as the lab the changes made.
                let again = XmlLab::parse_eager(&got).unwrap();
                assert_eq!(again.model().machines().count(), lab.machines().count());
                for (read, made) in again.model().machines().zip(lab.machines()) {
                    for field in Field::ALL {
                        assert_eq!(read.get(field), made.get(field), "{field:?}: {got}");
                    }
                }
                same_parts(&lazy, &eager, &format!("round {round}.{step}: {got}"));
                edited += usize::from(lab.is_changed());
                lazy = XmlLab::parse(&got).unwrap();
                eager = XmlLab::parse_eager(&got).unwrap();
            }
        }
        assert!(edited > 300, "only {edited} transactions changed anything");
    }

    #[test]
    fn a_proof_of_what_changed_catches_a_broken_piece() {
        let text = "<?xml version=\"1.0\"?>\n<settings>\n  <machine>\n    <name>a</name>\n  </machine>\n  <machine>\n    <name>b</name>\n  </machine>\n</settings>\n";
        let mut lab = XmlLab::parse(text).unwrap();
        let mut model = lab.model();
        model.get_mut("b").unwrap().set(Field::Os, "x").unwrap();
        lab.apply(model.changes()).unwrap();
        assert!(lab.render().is_ok());
        // A piece mama never makes: a bare `<` in a changed machine.
        let Some(Node::Element(b)) = lab
            .doc
            .root
            .children
            .iter_mut()
            .rev()
            .find(|n| n.is_element())
        else {
            panic!("machine b was built");
        };
        b.children.push(Node::Markup(xml::Str::new("<broken")));
        let err = lab.render().unwrap_err();
        assert!(!err.message.is_empty());
        // And a junction mama never makes: a machine run into its neighbour's text.
        let mut lab = XmlLab::parse(text).unwrap();
        lab.doc
            .root
            .children
            .insert(2, Node::Markup(xml::Str::new("<!-- a -- b -->")));
        assert!(lab.render().is_err());
    }
}

mod devices {
    use super::super::*;
    use super::changed;
    use crate::model::device::{Device, Driver};

    const LAB: &str = "<?xml version=\"1.0\"?>\n<settings>\n  <site>berlin</site>\n  <machine>\n    <name>rig1</name>\n    <pwr_dev>pdu1</pwr_dev>\n  </machine>\n</settings>\n";

    fn pdu(name: &str) -> Device {
        Device::new(
            name,
            Driver::Mpower,
            vec![
                ("address".into(), "192.168.2.2".into()),
                ("user".into(), "ubnt".into()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_device_goes_before_the_first_machine_then_after_the_last_device() {
        let xml = changed(LAB, |lab| lab.add_device(pdu("pdu1")).unwrap());
        let device = "  <device>\n    <name>pdu1</name>\n    <driver>mpower</driver>\n    \
                      <address>192.168.2.2</address>\n    <user>ubnt</user>\n  </device>\n";
        assert_eq!(
            xml,
            LAB.replace("  <machine>", &format!("{device}  <machine>")),
            "{xml}"
        );
        let xml = changed(&xml, |lab| lab.add_device(pdu("pdu2")).unwrap());
        let second = device.replace("pdu1", "pdu2");
        assert_eq!(
            xml,
            LAB.replace("  <machine>", &format!("{device}{second}  <machine>"))
        );
        let lab = XmlLab::parse(&xml).unwrap().model();
        let names: Vec<&str> = lab.devices().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["pdu1", "pdu2"]);
        assert_eq!(lab.device("pdu2").unwrap().options(), pdu("pdu2").options());
        // Removed, each takes its line with it.
        let xml = changed(&xml, |lab| lab.remove_device("pdu2").unwrap());
        assert_eq!(
            xml,
            LAB.replace("  <machine>", &format!("{device}  <machine>"))
        );
        let mut lab = XmlLab::parse(&xml).unwrap().model();
        assert!(
            lab.remove_device("pdu1")
                .unwrap_err()
                .to_string()
                .contains("named by rig1"),
        );
    }

    #[test]
    fn a_device_is_indented_as_the_document_is() {
        // Tabs, and a machine first among the root's children.
        let tabs = "<settings>\n\t<machine>\n\t\t<name>rig1</name>\n\t</machine>\n</settings>\n";
        let xml = changed(tabs, |lab| lab.add_device(pdu("pdu1")).unwrap());
        assert_eq!(
            xml,
            "<settings>\n\t<device>\n\t\t<name>pdu1</name>\n\t\t<driver>mpower</driver>\n\t\t\
             <address>192.168.2.2</address>\n\t\t<user>ubnt</user>\n\t</device>\n\t<machine>\n\t\t\
             <name>rig1</name>\n\t</machine>\n</settings>\n"
        );
        // An empty lab.
        let xml = changed("<settings/>", |lab| lab.add_device(pdu("p")).unwrap());
        assert!(
            xml.starts_with("<settings>\n  <device>\n    <name>p</name>\n"),
            "{xml}"
        );
        assert!(xml.ends_with("</user>\n  </device>\n</settings>"), "{xml}");
    }

    #[test]
    fn unknown_children_stay_and_broken_devices_are_kept_as_written() {
        let xml = LAB.replace(
            "  <machine>",
            "  <device id=\"7\">\n    <name>pdu1</name>\n    <driver>mpower</driver>\n    \
             <address>10.0.0.9</address>\n    <colour>red</colour>\n  </device>\n  \
             <device><driver>mpower</driver></device>\n  \
             <device><name>x</name><driver>telnet</driver></device>\n  \
             <device><name>pdu1</name><driver>command</driver></device>\n  \
             <device><name>c</name><driver>command</driver></device>\n  <machine>",
        );
        let lab = XmlLab::parse(&xml).unwrap().model();
        let names: Vec<&str> = lab.devices().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["pdu1", "c"]);
        assert_eq!(
            lab.device("pdu1").unwrap().option("address"),
            Some("10.0.0.9")
        );
        assert!(lab.device("c").unwrap().check().is_err(), "needs --on");
        let reasons: Vec<(&str, &str)> = lab
            .broken_devices()
            .map(|b| (b.name.as_str(), b.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert_eq!(reasons[0], ("", "it has no <name>"));
        assert!(reasons[1].1.contains("no driver 'telnet'"), "{reasons:?}");
        assert!(reasons[2].1.contains("earlier <device>"), "{reasons:?}");
        assert!(lab.device("x").unwrap_err().to_string().contains("broken"));
        let after = changed(&xml, |lab| lab.add_device(pdu("pdu3")).unwrap());
        let added = after.find("<name>pdu3</name>").unwrap();
        assert!(
            after.find("<name>c</name>").unwrap() < added,
            "after the last"
        );
        assert_eq!(
            after.replace(
                "  <device>\n    <name>pdu3</name>\n    <driver>mpower</driver>\n    \
                 <address>192.168.2.2</address>\n    <user>ubnt</user>\n  </device>\n",
                ""
            ),
            xml
        );
        // A broken one is removed by its name.
        let gone = changed(&xml, |lab| lab.remove_device("x").unwrap());
        assert!(!gone.contains("telnet") && gone.contains("<colour>red</colour>"));
    }

    #[test]
    fn devices_are_replaced_whole() {
        let mut source = XmlLab::parse(&LAB.replace(
            "  <machine>",
            "  <device a=\"b\">\n    <name>d1</name>\n    <driver>x</driver>\n  </device>\n  <machine>",
        ))
        .unwrap();
        let texts = source.device_texts();
        assert_eq!(
            texts,
            ["<device a=\"b\">\n    <name>d1</name>\n    <driver>x</driver>\n  </device>"]
        );
        let (devices, broken) = source.devices();
        let with_one = changed(LAB, |lab| lab.add_device(pdu("old")).unwrap());
        let replaced = changed(&with_one, |lab| {
            lab.replace_devices(devices.clone(), broken.clone(), texts.clone())
        });
        assert_eq!(replaced, source.to_xml());
        // Replacing with what is there changes nothing.
        let mut lab = source.take_model();
        lab.replace_devices(devices, broken, texts);
        source.apply(lab.changes()).unwrap();
        assert_eq!(source.to_xml(), replaced);
    }

    #[test]
    fn a_lab_without_devices_reads_none() {
        let lab = XmlLab::parse(LAB).unwrap().model();
        assert_eq!(lab.devices().count() + lab.broken_devices().count(), 0);
        // Nested elements called device are not the lab's.
        let nested = LAB.replace("<name>rig1</name>", "<name>rig1</name><device>x</device>");
        assert_eq!(XmlLab::parse(&nested).unwrap().model().devices().count(), 0);
    }
}

mod policy {
    use super::super::*;
    use super::changed;
    use crate::model::lease::Lease;
    use crate::model::setting::Setting;

    const LAB: &str = "<?xml version=\"1.0\"?>\n<settings>\n  <site>berlin</site>\n  <machine>\n    <name>rig1</name>\n    <reservation>alice</reservation>\n  </machine>\n  <machine>\n    <name>rig2</name>\n    <reservation/>\n  </machine>\n</settings>\n";

    fn lease(user: &str, expires: Option<i64>, note: &str) -> Lease {
        Lease {
            user: user.into(),
            expires,
            note: note.into(),
        }
    }

    #[test]
    fn settings_go_before_the_machines_and_go_when_emptied() {
        let xml = changed(LAB, |lab| {
            lab.set_setting(Setting::LongestReservation, "8h").unwrap()
        });
        let block = "  <lab_settings>\n    <longest_reservation>28800</longest_reservation>\n  \
                     </lab_settings>\n";
        assert_eq!(
            xml,
            LAB.replace(
                "  <machine>\n    <name>rig1",
                &format!("{block}  <machine>\n    <name>rig1")
            )
        );
        let lab = XmlLab::parse(&xml).unwrap().model();
        assert_eq!(lab.setting(Setting::LongestReservation), Some("28800"));
        let xml = changed(&xml, |lab| {
            lab.set_setting(Setting::Notify, "logger -t mama").unwrap()
        });
        assert!(
            xml.contains("28800</longest_reservation>\n    <notify>logger -t mama</notify>\n  </lab_settings>"),
            "{xml}"
        );
        let xml = changed(&xml, |lab| {
            lab.set_setting(Setting::Notify, "").unwrap();
            lab.set_setting(Setting::LongestReservation, "").unwrap();
        });
        assert_eq!(xml, LAB);
    }

    #[test]
    fn unknown_children_of_the_settings_stay() {
        let xml = LAB.replace(
            "  <site>",
            "  <lab_settings>\n    <colour>red</colour>\n    <notify>a</notify>\n    <notify>b</notify>\n  </lab_settings>\n  <site>",
        );
        let lab = XmlLab::parse(&xml).unwrap().model();
        assert_eq!(lab.settings(), [(Setting::Notify, "a".to_string())]);
        let after = changed(&xml, |lab| lab.set_setting(Setting::Notify, "").unwrap());
        assert!(
            after.contains("<lab_settings>\n    <colour>red</colour>\n  </lab_settings>"),
            "{after}"
        );
    }

    #[test]
    fn a_lease_is_an_element_of_its_own_that_reads_back() {
        let note = "bisect \"x\" & <y>\n\tz";
        let xml = changed(LAB, |lab| {
            lab.set_lease("rig1", Some(lease("alice", Some(9_999_999_999), note)))
                .unwrap()
        });
        assert!(
            xml.contains(
                "  <lease machine=\"rig1\" user=\"alice\" expires=\"9999999999\" \
                 note=\"bisect &quot;x&quot; &amp; &lt;y>&#10;&#9;z\"/>\n  <machine>"
            ),
            "{xml}"
        );
        let lab = XmlLab::parse(&xml).unwrap().model();
        assert_eq!(
            lab.get("rig1").unwrap().lease(),
            Some(&lease("alice", Some(9_999_999_999), note))
        );
        // Ended with the reservation, in the same change.
        let released = changed(&xml, |lab| {
            lab.get_mut("rig1")
                .unwrap()
                .set(crate::model::field::Field::Reservation, "")
                .unwrap()
        });
        assert!(!released.contains("<lease"), "{released}");
    }

    #[test]
    fn a_lease_counts_only_for_its_users_reservation() {
        let xml = LAB.replace(
            "  <site>",
            "  <lease machine=\"rig1\" user=\"bob\" expires=\"9999999999\" colour=\"red\"/>\n  \
             <lease machine=\"rig2\" user=\"alice\"/>\n  <lease machine=\"gone\" user=\"x\"/>\n  \
             <lease user=\"nobody\"/>\n  <site>",
        );
        let lab = XmlLab::parse(&xml).unwrap().model();
        assert!(lab.get("rig1").unwrap().lease().is_none());
        assert_eq!(
            lab.get("rig1").unwrap().reservation().as_deref(),
            Some("alice")
        );
        // The next transaction takes out what does not count, and only that.
        let after = changed(&xml, |lab| {
            lab.end_leases(std::time::SystemTime::now()).unwrap()
        });
        assert_eq!(
            after,
            LAB.replace("  <site>", "  <lease user=\"nobody\"/>\n  <site>")
        );
        // A lease of the holder is rewritten in place, its other
        // attributes kept.
        let own = xml.replace("user=\"bob\"", "user=\"alice\"");
        let after = changed(&own, |lab| {
            lab.set_lease("rig1", Some(lease("alice", Some(5), "")))
                .unwrap()
        });
        assert!(
            after.contains("<lease machine=\"rig1\" user=\"alice\" expires=\"5\" colour=\"red\"/>"),
            "{after}"
        );
    }

    #[test]
    fn an_expired_lease_ends_its_reservation_once() {
        let xml = changed(LAB, |lab| {
            lab.set_lease("rig1", Some(lease("alice", Some(1000), "n")))
                .unwrap()
        });
        let mut lab = XmlLab::parse(&xml).unwrap().model();
        // Judged over as read: every reader sees the machine free.
        assert_eq!(lab.get("rig1").unwrap().reservation(), None);
        assert_eq!(lab.get("rig1").unwrap().lease(), None);
        lab.end_leases(std::time::SystemTime::now()).unwrap();
        let events = lab.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, crate::model::event::Kind::Expired);
        assert!(events[0].detail.as_deref().unwrap_or("").contains("alice"));
        let after = changed(&xml, |lab| {
            lab.end_leases(std::time::SystemTime::now()).unwrap()
        });
        assert!(
            after.contains("<reservation/>") && !after.contains("<lease"),
            "{after}"
        );
        assert!(!after.contains("alice"), "{after}");
    }
}
