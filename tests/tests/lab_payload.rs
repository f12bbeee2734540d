//! The lab VM harness itself: a payload's exit status and its /payload/out
//! files come back, and a host binary copied in with its libraries runs
//! inside the lab VM (which has only busybox of its own). Not in CI, for
//! its time: `lab_vmm` there runs a payload, copied binaries and results
//! through the same harness. Run with:
//!   cargo test -p ssv-tests --test lab_payload -- --ignored

use ssv_tests::lab::{Arch, Payload};
use ssv_tests::lab_or_skip;
use std::sync::Mutex;
use std::time::Duration;

/// One lab VM at a time: the last test counts run.sh's work dirs.
static ONE_LAB: Mutex<()> = Mutex::new(());

#[test]
#[ignore = "lab self-test, not in CI for its time (lab_vmm covers it there): cargo test -p ssv-tests --test lab_payload -- --ignored"]
fn status_results_and_host_binaries_come_through() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_or_skip!(Arch::X86_64);
    let payload = Payload::new(Some(env!("CARGO_TARGET_TMPDIR").as_ref())).unwrap();
    // Coreutils' sha256sum, dynamically linked, where busybox has an
    // applet of the same name: the copied one must win.
    let sha = payload.add_binary("/usr/bin/sha256sum".as_ref()).unwrap();
    assert_eq!(sha, std::path::Path::new("/usr/bin/sha256sum"));
    payload
        .add_file("data/input.txt", b"lab payload data\n")
        .unwrap();
    payload
        .set_run_script(&format!(
            "{0} /payload/data/input.txt > /payload/out/sum.txt || exit 40\n\
             {0} --version | head -n1\n\
             /bin/busybox true || exit 41\n\
             echo payload done\n\
             exit 37\n",
            sha.display()
        ))
        .unwrap();

    let run = lab.run(&payload, Duration::from_secs(300)).unwrap();
    assert_eq!(run.status, 37, "{}", run.console);
    assert!(run.console.contains("payload done"), "{}", run.console);
    assert!(run.console.contains("(GNU coreutils)"), "{}", run.console);
    let sum = std::fs::read_to_string(run.results.join("sum.txt")).unwrap();
    let host = std::process::Command::new("sha256sum")
        .arg(payload.dir().join("data/input.txt"))
        .output()
        .unwrap();
    let host = String::from_utf8(host.stdout).unwrap();
    assert_eq!(
        sum.split_whitespace().next(),
        host.split_whitespace().next(),
        "in-VM sha256sum differs from the host's"
    );
}

#[test]
#[ignore = "lab self-test, not in CI for its time (lab_vmm covers it there): cargo test -p ssv-tests --test lab_payload -- --ignored"]
fn a_payload_that_hangs_is_stopped_at_the_timeout() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_or_skip!(Arch::X86_64);
    let payload = Payload::new(Some(env!("CARGO_TARGET_TMPDIR").as_ref())).unwrap();
    payload
        .set_run_script("echo hanging; sleep 1000\n")
        .unwrap();
    // The lab VM takes 15-25 s to reach the payload (more when the host is
    // busy): the timeout leaves room for that, or the payload never runs.
    let run = lab.run(&payload, Duration::from_secs(60)).unwrap();
    assert_eq!(run.status, 124, "{}", run.console);
    assert!(run.console.contains("hanging"), "{}", run.console);
    assert!(run.elapsed < Duration::from_secs(100), "{:?}", run.elapsed);
}

#[test]
#[ignore = "lab self-test, not in CI for its time (lab_vmm covers it there): cargo test -p ssv-tests --test lab_payload -- --ignored"]
fn a_lab_vm_that_goes_silent_is_stopped_as_frozen() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_or_skip!(Arch::X86_64);
    let payload = Payload::new(Some(env!("CARGO_TARGET_TMPDIR").as_ref())).unwrap();
    payload
        .set_run_script("echo going quiet; sleep 1000\n")
        .unwrap();
    let work_dirs = || {
        std::fs::read_dir(lab.dir().parent().unwrap().join("runs"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("work."))
                    .count()
            })
            .unwrap_or(0)
    };
    let before = work_dirs();
    let run = lab
        .run_until_silent(&payload, Duration::from_secs(300), Duration::from_secs(30))
        .unwrap();
    assert_eq!(run.status, 126, "{}", run.console);
    let why = run
        .nested_failure()
        .expect("a frozen lab VM is the lab's failure");
    assert!(
        why.contains("froze") && why.contains("going quiet"),
        "{why}"
    );
    assert!(run.elapsed < Duration::from_secs(150), "{:?}", run.elapsed);
    // Stopped with SIGTERM first, run.sh removed its work files.
    assert_eq!(work_dirs(), before);
}
