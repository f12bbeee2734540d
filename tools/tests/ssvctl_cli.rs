//! The real `ssvctl` binary against a fake ssvd: a Unix socket in the test
//! answering canned HTTP/1.1 responses in order, one connection each, and
//! recording what ssvctl asked. (End-to-end tests with a real ssvd live in
//! tests/.)

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the fake ssvd read it.
#[derive(Debug)]
struct Req {
    /// e.g. `GET /v1/volumes HTTP/1.1`.
    line: String,
    body: String,
}

impl Req {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

struct Fake {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Req>>,
}

impl Fake {
    /// Serves `answers` in order; past them, 500s (recorded all the same).
    fn start(answers: Vec<String>) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ssvd.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut answers: VecDeque<String> = answers.into();
            let mut seen = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                let conn = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => panic!("accept: {e}"),
                };
                conn.set_nonblocking(false).unwrap();
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim_end().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; length];
                r.read_exact(&mut body).unwrap();
                seen.push(Req {
                    line: line.trim_end().to_string(),
                    body: String::from_utf8(body).unwrap(),
                });
                let answer = answers.pop_front().unwrap_or_else(|| {
                    respond(500, r#"{"error":"storage","message":"unexpected request"}"#)
                });
                let mut conn = r.into_inner();
                // ssvctl may hang up early; that is its business.
                let _ = conn.write_all(answer.as_bytes());
            }
            seen
        });
        Fake {
            _dir: dir,
            sock,
            stop,
            handle,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        ssvctl(&self.sock, args)
    }

    /// Stops serving; what ssvctl asked, in order.
    fn requests(self) -> Vec<Req> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

fn ssvctl(sock: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssvctl"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .env_remove("SSVD_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn respond(status: u16, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn ok(v: &Value) -> String {
    respond(200, &v.to_string())
}

/// A chunked answer, one chunk per part.
fn chunked(status: u16, parts: &[&str]) -> String {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    for p in parts {
        out.push_str(&format!("{:x}\r\n{p}\r\n", p.len()));
    }
    out.push_str("0\r\n\r\n");
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into()
}

fn records() -> Value {
    json!([
        {"id": "v1", "name": "db", "pool": "pool0", "top": "ssv_v1_0", "lease_slot": 1,
         "created": 1_700_000_000u64, "layers": [], "snapshots": [], "lv_bytes": 268435456u64},
        {"id": "v2", "name": "web café", "pool": "pool0", "top": "ssv_v2_0", "lease_slot": 2,
         "created": 1_700_000_060u64, "layers": [],
         "snapshots": [{"id": "s1", "name": "a", "volume": "v2", "lv": "ssv_v2_0", "created": 0}],
         "lv_bytes": 1610612736u64}
    ])
}

fn detail(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "pool": "pool0", "top": format!("ssv_{id}_0"), "lease_slot": 1,
           "created": 1_700_000_000u64, "layers": [], "snapshots": [], "lv_bytes": 134217728u64,
           "size": 10737418240u64, "cluster_size": 65536, "allocated_end": 0, "state": "closed"})
}

#[test]
fn volume_list_prints_a_table() {
    let fake = Fake::start(vec![ok(&records())]);
    let o = fake.run(&["volume", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ID  NAME      POOL   ALLOCATED  SNAPSHOTS  CREATED\n\
         v1  db        pool0  256.0 MiB          0  2023-11-14 22:13:20\n\
         v2  web café  pool0    1.5 GiB          1  2023-11-14 22:14:20\n"
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].line, "GET /v1/volumes HTTP/1.1");
}

#[test]
fn quiet_lists_print_ids() {
    let fake = Fake::start(vec![ok(&records())]);
    let o = fake.run(&["-q", "volume", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "v1\nv2\n");
    fake.requests();
}

#[test]
fn json_prints_the_api_answer_as_is() {
    let fake = Fake::start(vec![ok(&records())]);
    let o = fake.run(&["volume", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, records());
    // Pretty: one field a line.
    assert!(
        stdout(&o).contains("\n    \"id\": \"v1\",\n"),
        "{}",
        stdout(&o)
    );
    fake.requests();
}

#[test]
fn volume_create_sends_name_and_size() {
    let fake = Fake::start(vec![
        respond(201, &detail("v9", "db").to_string()),
        respond(201, &detail("v10", "logs").to_string()),
    ]);
    let o = fake.run(&["volume", "create", "db", "--size", "10g"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "created volume v9 (\"db\"), 10.0 GiB in pool pool0\n"
    );
    let o = fake.run(&[
        "volume",
        "create",
        "logs",
        "--size",
        "1t",
        "--id",
        "v10",
        "--pool",
        "pool0",
        "--cluster-size",
        "1m",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reqs = fake.requests();
    assert_eq!(reqs[0].line, "POST /v1/volumes HTTP/1.1");
    assert_eq!(reqs[0].json(), json!({"name": "db", "size": "10g"}));
    assert_eq!(
        reqs[1].json(),
        json!({"name": "logs", "size": "1t", "id": "v10", "pool": "pool0", "cluster_size": "1m"})
    );
}

#[test]
fn not_found_exits_3_with_the_message() {
    let msg = "no volume with id or name \"nope\" (`ssvctl volume list` shows them)";
    let fake = Fake::start(vec![respond(
        404,
        &json!({"error": "not_found", "message": msg}).to_string(),
    )]);
    let o = fake.run(&["volume", "show", "nope"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(stderr(&o), format!("ssvctl: {msg}\n"));
    assert_eq!(stdout(&o), "");
    assert_eq!(fake.requests()[0].line, "GET /v1/volumes/nope HTTP/1.1");
}

#[test]
fn conflict_exits_4() {
    let msg = "volume v1 is open on host 2; close it there first";
    let fake = Fake::start(vec![respond(
        409,
        &json!({"error": "conflict", "message": msg}).to_string(),
    )]);
    let o = fake.run(&["volume", "delete", "v1", "--yes"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(stderr(&o), format!("ssvctl: {msg}\n"));
    assert_eq!(fake.requests()[0].line, "DELETE /v1/volumes/v1 HTTP/1.1");
}

#[test]
fn other_kinds_map_to_their_codes() {
    let fake = Fake::start(vec![
        respond(507, r#"{"error":"no_space","message":"pool0 is full"}"#),
        respond(
            503,
            r#"{"error":"unavailable","message":"lockd is not running"}"#,
        ),
        respond(400, r#"{"error":"invalid","message":"bad size \"ten\""}"#),
        respond(500, r#"{"error":"storage","message":"read failed"}"#),
    ]);
    for code in [5, 6, 7, 1] {
        let o = fake.run(&["volume", "resize", "v1", "--size", "ten"]);
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
    }
    let reqs = fake.requests();
    assert_eq!(reqs[0].line, "POST /v1/volumes/v1/resize HTTP/1.1");
    assert_eq!(reqs[0].json(), json!({"size": "ten"}));
}

#[test]
fn no_socket_exits_6() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("not-there.sock");
    let o = ssvctl(&sock, &["host", "status"]);
    assert_eq!(o.status.code(), Some(6));
    let err = stderr(&o);
    assert!(err.starts_with("ssvctl: "), "{err}");
    assert!(err.contains(&sock.display().to_string()), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let o = ssvctl(&dir.path().join("s"), &["volume", "create", "db"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn delete_without_yes_is_refused_off_a_terminal() {
    let fake = Fake::start(vec![]);
    for args in [
        &["volume", "delete", "v1"][..],
        &["snapshot", "delete", "v1", "s1"],
        &["snapshot", "revert", "v1", "s1"],
    ] {
        let o = fake.run(args);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(err.contains("without --yes"), "{err}");
    }
    // Give a stray connection time to arrive before looking.
    std::thread::sleep(Duration::from_millis(50));
    let reqs = fake.requests();
    assert!(reqs.is_empty(), "{reqs:?}");
}

#[test]
fn names_are_url_encoded() {
    let fake = Fake::start(vec![respond(204, ""), ok(&detail("v1", "my vol"))]);
    let o = fake.run(&["snapshot", "delete", "my vol", "café 1/2", "--yes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = fake.run(&["volume", "show", "my vol"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("name:          my vol\n"),
        "{}",
        stdout(&o)
    );
    let reqs = fake.requests();
    assert_eq!(
        reqs[0].line,
        "DELETE /v1/volumes/my%20vol/snapshots/caf%C3%A9%201%2F2 HTTP/1.1"
    );
    assert_eq!(reqs[1].line, "GET /v1/volumes/my%20vol HTTP/1.1");
}

#[test]
fn job_show_reads_a_chunked_answer() {
    let body = json!({"id": "j1", "kind": "full_clone", "state": "running",
        "done_bytes": 1073741824u64, "total_bytes": 4294967296u64, "volume": "v2"})
    .to_string();
    let (a, b) = body.split_at(body.len() / 2);
    let fake = Fake::start(vec![chunked(200, &[a, b])]);
    let o = fake.run(&["job", "show", "j1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "id:       j1\n\
         kind:     full_clone\n\
         state:    running\n\
         progress: 1.0 GiB / 4.0 GiB (25.0%)\n\
         volume:   v2\n"
    );
    assert_eq!(fake.requests()[0].line, "GET /v1/jobs/j1 HTTP/1.1");
}

#[test]
fn events_prints_one_line_per_event() {
    let e1 = r#"{"seq":1,"time_ms":1700000000123,"kind":"volume.created","pool":"pool0","volume":"v1","message":"volume v1 created"}"#;
    let e2 = r#"{"seq":2,"time_ms":1700000001000,"kind":"session.opened","volume":"v1","message":"open"}"#;
    let stream = format!("{e1}\n{e2}\n");
    // Chunks that cut a line in two.
    let (a, b) = stream.split_at(40);
    let fake = Fake::start(vec![chunked(200, &[a, b]), chunked(200, &[a, b])]);
    let o = fake.run(&["events"]);
    // The stream ending means ssvd went away.
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("ended the event stream"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        stdout(&o),
        "2023-11-14T22:13:20.123Z  volume.created      pool0/v1  volume v1 created\n\
         2023-11-14T22:13:21.000Z  session.opened      v1  open\n"
    );
    let o = fake.run(&["events", "--json"]);
    assert_eq!(stdout(&o), stream);
    let reqs = fake.requests();
    assert_eq!(reqs[0].line, "GET /v1/events HTTP/1.1");
}

fn job(state: &str, done: u64) -> Value {
    json!({"id": "j1", "kind": "full_clone", "state": state, "done_bytes": done,
           "total_bytes": 2097152u64, "volume": "v2"})
}

#[test]
fn full_clone_follows_its_job() {
    let fake = Fake::start(vec![
        respond(202, &job("running", 0).to_string()),
        ok(&job("running", 1048576)),
        ok(&job("done", 2097152)),
    ]);
    let o = fake.run(&["volume", "clone", "v1", "copy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "full clone v2 (\"copy\") of v1 done: 2.0 MiB copied\n"
    );
    // No progress bar off a terminal.
    assert_eq!(stderr(&o), "");
    let reqs = fake.requests();
    assert_eq!(reqs[0].line, "POST /v1/volumes/v1/clones HTTP/1.1");
    assert_eq!(reqs[0].json(), json!({"name": "copy", "mode": "full"}));
    assert_eq!(reqs.len(), 3);
    assert!(reqs[1..]
        .iter()
        .all(|r| r.line == "GET /v1/jobs/j1 HTTP/1.1"));
}

#[test]
fn failed_clone_job_exits_1_with_its_error() {
    let mut failed = job("failed", 0);
    failed["error"] = json!("copying: pool0 is full");
    let fake = Fake::start(vec![
        respond(202, &job("running", 0).to_string()),
        ok(&failed),
    ]);
    let o = fake.run(&["volume", "clone", "v1", "copy", "--snapshot", "s1"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "ssvctl: job j1 failed: copying: pool0 is full\n"
    );
    let reqs = fake.requests();
    assert_eq!(
        reqs[0].json(),
        json!({"name": "copy", "mode": "full", "snapshot": "s1"})
    );
}

#[test]
fn clone_no_wait_and_linked_return_at_once() {
    let mut done = detail("v3", "lc");
    done["kind"] = json!("done");
    let fake = Fake::start(vec![
        respond(202, &job("running", 0).to_string()),
        respond(201, &done.to_string()),
    ]);
    let o = fake.run(&["volume", "clone", "v1", "copy", "--no-wait", "--id", "v2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("job j1"), "{}", stdout(&o));
    let o = fake.run(&[
        "volume",
        "clone",
        "v1",
        "lc",
        "--linked",
        "--snapshot",
        "s1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "clone v3 (\"lc\") of v1 ready, 10.0 GiB in pool pool0\n"
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(
        reqs[0].json(),
        json!({"name": "copy", "mode": "full", "id": "v2"})
    );
    assert_eq!(
        reqs[1].json(),
        json!({"name": "lc", "mode": "linked", "snapshot": "s1"})
    );
}

#[test]
fn volume_open_prints_the_nbd_uri() {
    let mut d = detail("v1", "db");
    d["state"] = json!("session");
    d["nbd"] = json!("nbd://10.0.0.5:10809/v1");
    let fake = Fake::start(vec![ok(&d), respond(204, "")]);
    let o = fake.run(&["volume", "open", "db"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "nbd://10.0.0.5:10809/v1\n");
    let o = fake.run(&["volume", "close", "db"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reqs = fake.requests();
    assert_eq!(reqs[0].line, "POST /v1/volumes/db/session HTTP/1.1");
    assert_eq!(reqs[1].line, "DELETE /v1/volumes/db/session HTTP/1.1");
}

#[test]
fn pool_create_sends_luns() {
    let pool = json!({"name": "pool0", "uuid": "u", "seqno": 1, "extent_size": 134217728u64,
        "capacity": 10737418240u64, "allocated": 134217728u64, "free": 10603200512u64,
        "provisioned": 0, "volumes": 0, "lvs": 1, "lease_slots": 64, "lockspace": "joined",
        "health": [], "luns": [{"path": "/dev/sdb", "pv": "pv0", "size": 10737418240u64, "free": 10603200512u64}]});
    let fake = Fake::start(vec![respond(201, &pool.to_string())]);
    let o = fake.run(&[
        "pool",
        "create",
        "pool0",
        "/dev/sdb",
        "/dev/sdc",
        "--extent-size",
        "64m",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("capacity:    10.0 GiB\n"), "{out}");
    assert!(out.contains("/dev/sdb  pv0  10.0 GiB  9.9 GiB\n"), "{out}");
    let reqs = fake.requests();
    assert_eq!(reqs[0].line, "POST /v1/pools HTTP/1.1");
    assert_eq!(
        reqs[0].json(),
        json!({"name": "pool0", "luns": ["/dev/sdb", "/dev/sdc"], "extent_size": "64m"})
    );
}

#[test]
fn completions_need_no_ssvd() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = ssvctl(&dir.path().join("s"), &["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        assert!(stdout(&o).contains("ssvctl"), "{shell}");
    }
}
