//! The API against a test VM and test disks: the operations, the pause
//! reasons, the socket (replies, events, hostile lines).

use super::protocol::{handle_line, After};
use super::*;
use proptest::prelude::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// Counts what the API asked of it; `running` is the vCPUs' state.
#[derive(Default)]
pub(crate) struct TestVm {
    pub running: AtomicBool,
    pub pauses: AtomicU32,
    pub resumes: AtomicU32,
    pub shutdowns: AtomicU32,
}

impl VmControl for TestVm {
    fn vcpus(&self) -> u32 {
        2
    }
    fn memory_bytes(&self) -> u64 {
        64 << 20
    }
    fn pause_vcpus(&self) -> Result<(), String> {
        assert!(self.running.swap(false, Ordering::SeqCst), "paused twice");
        self.pauses.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn resume_vcpus(&self) -> Result<(), String> {
        assert!(!self.running.swap(true, Ordering::SeqCst), "resumed twice");
        self.resumes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn shutdown(&self) -> Result<(), String> {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A disk whose snapshots are counted and whose layers grow by one each.
pub(crate) struct TestDisk {
    pub layers: Mutex<Vec<String>>,
}

impl DiskControl for TestDisk {
    fn id(&self) -> &str {
        "d0"
    }
    fn status(&self) -> DiskStatus {
        DiskStatus {
            id: "d0".into(),
            read_only: false,
            virtual_size: 1 << 30,
            lv_size: 256 << 20,
            allocated_end: 1 << 20,
            layers: self.layers.lock().unwrap().clone(),
            fenced: false,
            growth: None,
        }
    }
    fn snapshot(&self, name: &str) -> Result<Value, String> {
        if name == "refused" {
            return Err("ssvd refused".into());
        }
        let mut l = self.layers.lock().unwrap();
        let n = l.len();
        l.insert(0, format!("v_{n}"));
        Ok(json!({"name": name, "lv": l[1]}))
    }
}

fn controller() -> (Arc<TestVm>, Arc<Controller>) {
    let vm = Arc::new(TestVm::default());
    vm.running.store(true, Ordering::SeqCst);
    let disk = Arc::new(TestDisk {
        layers: Mutex::new(vec!["v_0".into()]),
    });
    let ctl = Arc::new(Controller::new(
        vm.clone(),
        vec![disk],
        Arc::new(EventHub::default()),
    ));
    (vm, ctl)
}

fn req(ctl: &Controller, line: &str) -> Value {
    handle_line(ctl, line.as_bytes()).0
}

#[test]
fn status_reports_the_vm_and_its_disks() {
    let (_, ctl) = controller();
    let r = req(&ctl, r#"{"id": 1, "op": "status"}"#);
    assert_eq!(r["id"], 1);
    assert_eq!(r["ok"], true);
    let s = &r["result"];
    assert_eq!(s["state"], "running");
    assert_eq!(s["vcpus"], 2);
    assert_eq!(s["memory"], 64 << 20);
    assert_eq!(s["disks"][0]["id"], "d0");
    assert_eq!(s["disks"][0]["lv_size"], 256 << 20);
    assert_eq!(s["disks"][0]["allocated_end"], 1 << 20);
    let d = req(&ctl, r#"{"id": "x", "op": "disks"}"#);
    assert_eq!(d["id"], "x");
    assert_eq!(d["result"][0]["virtual_size"], 1u64 << 30);
}

#[test]
fn a_vm_paused_by_the_user_and_for_space_runs_when_both_are_gone() {
    let (vm, ctl) = controller();
    let ev = ctl.events.subscribe();
    assert_eq!(
        req(&ctl, r#"{"id":1,"op":"pause"}"#)["result"]["state"],
        "paused"
    );
    assert!(!vm.running.load(Ordering::SeqCst));
    // Pausing again changes nothing (the test VM asserts no second pause).
    req(&ctl, r#"{"id":2,"op":"pause"}"#);
    ctl.disk_no_space("d0", "pool full");
    let s = req(&ctl, r#"{"id":3,"op":"resume"}"#);
    assert_eq!(s["result"]["state"], "paused");
    assert_eq!(s["result"]["reason"], "enospc");
    assert!(
        !vm.running.load(Ordering::SeqCst),
        "the disk still has no space"
    );
    ctl.disk_space_back("d0");
    assert!(vm.running.load(Ordering::SeqCst));
    assert_eq!(vm.pauses.load(Ordering::SeqCst), 1);
    assert_eq!(vm.resumes.load(Ordering::SeqCst), 1);
    let kinds: Vec<(String, Value)> = ev
        .try_iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("paused".into(), json!("user")),
            ("disk.no_space".into(), Value::Null),
            ("paused".into(), json!("enospc")),
            ("disk.space_back".into(), Value::Null),
            ("resumed".into(), json!("enospc")),
        ]
    );
}

#[test]
fn space_coming_back_does_not_resume_a_vm_the_user_paused() {
    let (vm, ctl) = controller();
    ctl.disk_no_space("d0", "full");
    req(&ctl, r#"{"id":1,"op":"pause"}"#);
    ctl.disk_space_back("d0");
    assert!(!vm.running.load(Ordering::SeqCst));
    assert_eq!(ctl.state()["reason"], "user");
    req(&ctl, r#"{"id":2,"op":"resume"}"#);
    assert!(vm.running.load(Ordering::SeqCst));
}

#[test]
fn snapshot_and_shutdown_go_to_the_disk_and_the_vm_with_events() {
    let (vm, ctl) = controller();
    let ev = ctl.events.subscribe();
    let r = req(&ctl, r#"{"id":1,"op":"snapshot","disk":"d0","name":"s1"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["lv"], "v_0");
    assert_eq!(ctl.disks()[0].layers, vec!["v_1", "v_0"]);
    let e = ev.try_recv().unwrap();
    assert_eq!(
        (e["event"].as_str(), e["disk"].as_str()),
        (Some("snapshot.created"), Some("d0"))
    );
    let bad = req(
        &ctl,
        r#"{"id":2,"op":"snapshot","disk":"nope","name":"s1"}"#,
    );
    assert_eq!(bad["ok"], false);
    assert!(
        bad["error"].as_str().unwrap().contains("disks: d0"),
        "{bad}"
    );
    let refused = req(
        &ctl,
        r#"{"id":3,"op":"snapshot","disk":"d0","name":"refused"}"#,
    );
    assert_eq!(refused["error"], "ssvd refused");
    assert!(ev.try_recv().is_err(), "no event for a failed snapshot");
    req(&ctl, r#"{"id":4,"op":"shutdown"}"#);
    assert_eq!(vm.shutdowns.load(Ordering::SeqCst), 1);
    assert_eq!(ev.try_recv().unwrap()["event"], "shutdown");
}

#[test]
fn bad_requests_get_error_replies_with_their_id_when_there_is_one() {
    let (_, ctl) = controller();
    for (line, id) in [
        ("nope", Value::Null),
        ("[1,2]", Value::Null),
        (r#"{"op":"status"}"#, Value::Null),
        (r#"{"id":[1],"op":"status"}"#, Value::Null),
        (r#"{"id":7,"op":"reboot"}"#, json!(7)),
        (r#"{"id":8}"#, json!(8)),
        (r#"{"id":9,"op":"snapshot","disk":"d0"}"#, json!(9)),
        (
            r#"{"id":10,"op":"snapshot","disk":"d0","name":""}"#,
            json!(10),
        ),
    ] {
        let r = req(&ctl, line);
        assert_eq!(r["ok"], false, "{line}: {r}");
        assert_eq!(r["id"], id, "{line}");
        assert!(!r["error"].as_str().unwrap().is_empty());
    }
}

proptest! {
    /// Any bytes, and JSON objects with random fields: a reply, never a panic;
    /// an error unless the line is a valid request.
    #[test]
    fn hostile_lines_get_a_reply(line in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (_, ctl) = controller();
        let (r, after) = handle_line(&ctl, &line);
        prop_assert!(r["ok"].is_boolean());
        if r["ok"] == false {
            prop_assert!(r["error"].is_string());
            prop_assert_eq!(after, After::Continue);
        }
    }

    #[test]
    fn hostile_objects_get_a_reply(
        id in prop_oneof![Just(json!(null)), any::<i64>().prop_map(|n| json!(n)), ".{0,300}".prop_map(|s| json!(s)), Just(json!({"a":1}))],
        op in prop_oneof![Just(json!("status")), Just(json!("snapshot")), Just(json!("pause")), ".{0,20}".prop_map(|s| json!(s)), any::<f64>().prop_map(|f| json!(f))],
        disk in prop_oneof![Just(json!("d0")), ".{0,300}".prop_map(|s| json!(s)), Just(json!(1))],
        name in prop_oneof![".{0,300}".prop_map(|s| json!(s)), Just(json!(null))],
    ) {
        let (_, ctl) = controller();
        let line = json!({"id": id, "op": op, "disk": disk, "name": name}).to_string();
        let (r, _) = handle_line(&ctl, line.as_bytes());
        prop_assert!(r["ok"].is_boolean());
        if r["ok"] == true {
            prop_assert_eq!(&r["id"], &id);
        } else {
            prop_assert!(r["error"].is_string());
        }
    }
}

fn connect(path: &std::path::Path) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn read_json(r: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn the_socket_is_private_answers_each_line_and_streams_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let (_, ctl) = controller();
    let server = ApiServer::start(&path, ctl.clone()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second server on a live socket is refused.
    assert!(ApiServer::start(&path, ctl.clone()).is_err());

    let (mut sub_r, mut sub_w) = connect(&path);
    sub_w
        .write_all(b"{\"id\":1,\"op\":\"subscribe\"}\n")
        .unwrap();
    assert_eq!(read_json(&mut sub_r)["result"]["subscribed"], true);

    let (mut r, mut w) = connect(&path);
    // Two requests in one write, garbage between, CRLF, a blank line.
    w.write_all(b"{\"id\":1,\"op\":\"pause\"}\r\n\n\xff\xfe\n{\"id\":2,\"op\":\"status\"}\n")
        .unwrap();
    assert_eq!(read_json(&mut r)["result"]["state"], "paused");
    let bad = read_json(&mut r);
    assert_eq!(
        (bad["ok"].clone(), bad["id"].clone()),
        (json!(false), Value::Null)
    );
    assert_eq!(read_json(&mut r)["result"]["state"], "paused");

    let e = read_json(&mut sub_r);
    assert_eq!(
        (e["event"].as_str(), e["reason"].as_str()),
        (Some("paused"), Some("user"))
    );

    // An overlong line is refused and ends the connection.
    let long = vec![b'x'; super::protocol::MAX_LINE + 10];
    w.write_all(&long).unwrap();
    let r2 = read_json(&mut r);
    assert!(r2["error"].as_str().unwrap().contains("longer"), "{r2}");
    let mut rest = String::new();
    assert_eq!(r.read_line(&mut rest).unwrap(), 0);

    drop(server);
    assert!(!path.exists(), "the socket goes with the server");
}
