//! The transport driven as Linux's virtio_pci driver drives it: find the
//! capabilities, negotiate, set up queues with their MSI-X vectors, enable
//! MSI-X; then interrupts, notifications, BAR moves and resets. And random
//! traffic that must never panic.

use super::*;
use crate::devices::pci::msix::{MsiMessage, CONTROL_ENABLE, CONTROL_FUNCTION_MASK};
use crate::devices::pci::{reg, COMMAND_MEMORY};
use crate::devices::virtio::test_device::{test_device, Log, FEATURE_X, MEM};
use crate::devices::virtio::transport::status;
use crate::devices::virtio::F_VERSION_1;
use proptest::prelude::*;
use vmm_sys_util::eventfd::EventFd;

const BAR: u64 = 0xe000_8000;

#[derive(Default)]
struct Sent(Mutex<Vec<MsiMessage>>);

impl MsiSink for Sent {
    fn send(&self, msg: MsiMessage) -> std::io::Result<()> {
        self.0.lock().unwrap().push(msg);
        Ok(())
    }
}

impl Sent {
    fn take(&self) -> Vec<MsiMessage> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Ioeventfds registered now: (address, eventfd number).
#[derive(Default)]
struct Doorbells(Mutex<Vec<u64>>);

impl IoEvents for Doorbells {
    fn register(&self, _: &EventFd, addr: u64) -> std::io::Result<()> {
        let mut v = self.0.lock().unwrap();
        assert!(!v.contains(&addr), "{addr:#x} registered twice");
        v.push(addr);
        Ok(())
    }
    fn unregister(&self, _: &EventFd, addr: u64) -> std::io::Result<()> {
        let mut v = self.0.lock().unwrap();
        let i = v.iter().position(|&a| a == addr).expect("not registered");
        v.remove(i);
        Ok(())
    }
}

struct Rig {
    dev: VirtioPciDevice,
    log: Arc<Mutex<Log>>,
    sent: Arc<Sent>,
    bells: Arc<Doorbells>,
}

fn rig() -> Rig {
    let (d, mem, log) = test_device();
    let sent = Arc::new(Sent::default());
    let bells = Arc::new(Doorbells::default());
    let dev = VirtioPciDevice::new(d, mem, BAR, sent.clone(), Some(bells.clone())).unwrap();
    Rig {
        dev,
        log,
        sent,
        bells,
    }
}

fn cfg(d: &VirtioPciDevice, at: usize, len: usize) -> u32 {
    let mut b = [0u8; 4];
    d.config().read(at, &mut b[..len]);
    u32::from_le_bytes(b)
}

/// The BAR offset of each virtio capability type, found as Linux finds
/// them: walking the list for vendor capabilities.
fn find_caps(d: &VirtioPciDevice) -> Vec<(u8, u64, u32)> {
    let mut out = Vec::new();
    let mut at = cfg(d, reg::CAPABILITIES, 1) as usize;
    while at != 0 {
        if cfg(d, at, 1) == u32::from(CAP_VENDOR) {
            let cfg_type = cfg(d, at + 3, 1) as u8;
            assert_eq!(cfg(d, at + 4, 1), 0, "all in BAR 0");
            out.push((cfg_type, u64::from(cfg(d, at + 8, 4)), cfg(d, at + 12, 4)));
            if cfg_type == CAP_NOTIFY {
                assert_eq!(cfg(d, at + 16, 4), NOTIFY_MULTIPLIER);
            }
        }
        at = cfg(d, at + 1, 1) as usize;
    }
    out
}

fn msix_cap(d: &VirtioPciDevice) -> usize {
    let mut at = cfg(d, reg::CAPABILITIES, 1) as usize;
    while cfg(d, at, 1) != u32::from(msix::CAP_ID) {
        at = cfg(d, at + 1, 1) as usize;
        assert_ne!(at, 0, "no MSI-X capability");
    }
    at
}

fn rd(d: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    d.read_bar(off, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn wr(d: &mut VirtioPciDevice, off: u64, v: u64, len: usize) {
    d.write_bar(off, &v.to_le_bytes()[..len]);
}

fn set_status(d: &mut VirtioPciDevice, s: u32) {
    wr(d, COMMON + common::DEVICE_STATUS, u64::from(s), 1);
}

const OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

/// Programs MSI-X entry `v` with an x86 message to APIC `dest`, vector
/// `0x40 + v`, unmasked.
fn program_vector(d: &mut VirtioPciDevice, v: u64, dest: u64) {
    let e = MSIX_TABLE + v * 16;
    wr(d, e, 0xfee0_0000 | dest << 12, 4);
    wr(d, e + 4, 0, 4);
    wr(d, e + 8, 0x40 + v, 4);
    wr(d, e + 12, 0, 4);
}

fn msg(v: u64, dest: u64) -> MsiMessage {
    MsiMessage {
        address: 0xfee0_0000 | dest << 12,
        data: 0x40 + v as u32,
    }
}

/// Linux's bring-up up to DRIVER_OK, queue 0 on vector 1 and queue 1 on
/// vector 2, configuration changes on vector 0.
fn bring_up(r: &mut Rig) {
    let d = &mut r.dev;
    set_status(d, 0);
    set_status(d, status::ACKNOWLEDGE);
    set_status(d, status::ACKNOWLEDGE | status::DRIVER);
    wr(d, COMMON + common::DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(rd(d, COMMON + common::DEVICE_FEATURE, 4), 1, "VERSION_1");
    wr(d, COMMON + common::DRIVER_FEATURE_SELECT, 0, 4);
    wr(d, COMMON + common::DRIVER_FEATURE, FEATURE_X, 4);
    wr(d, COMMON + common::DRIVER_FEATURE_SELECT, 1, 4);
    wr(d, COMMON + common::DRIVER_FEATURE, 1, 4);
    set_status(d, OK);
    assert_eq!(rd(d, COMMON + common::DEVICE_STATUS, 1), u64::from(OK));
    // MSI-X on, function masked while the table is filled (as Linux does).
    let cap = msix_cap(d);
    d.write_config(
        cap + 2,
        &(CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes(),
    );
    for v in 0..3 {
        program_vector(d, v, v);
    }
    d.write_config(cap + 2, &CONTROL_ENABLE.to_le_bytes());
    wr(d, COMMON + common::CONFIG_MSIX_VECTOR, 0, 2);
    assert_eq!(rd(d, COMMON + common::CONFIG_MSIX_VECTOR, 2), 0);
    for (q, (size, base)) in [(16u64, 0x1000u64), (8, 0x4000)].into_iter().enumerate() {
        wr(d, COMMON + common::QUEUE_SELECT, q as u64, 2);
        assert_eq!(rd(d, COMMON + common::QUEUE_NOTIFY_OFF, 2), q as u64);
        wr(d, COMMON + common::QUEUE_SIZE, size, 2);
        wr(d, COMMON + common::QUEUE_MSIX_VECTOR, q as u64 + 1, 2);
        assert_eq!(rd(d, COMMON + common::QUEUE_MSIX_VECTOR, 2), q as u64 + 1);
        for (i, field) in [
            common::QUEUE_DESC,
            common::QUEUE_DRIVER,
            common::QUEUE_DEVICE,
        ]
        .into_iter()
        .enumerate()
        {
            let a = base + i as u64 * 0x400;
            wr(d, COMMON + field, a & 0xffff_ffff, 4);
            wr(d, COMMON + field + 4, a >> 32, 4);
        }
        wr(d, COMMON + common::QUEUE_ENABLE, 1, 2);
    }
    set_status(d, OK | status::DRIVER_OK);
}

#[test]
fn the_capabilities_point_into_the_bar_and_identify_a_modern_device() {
    let r = rig();
    let d = &r.dev;
    assert_eq!(cfg(d, 0, 4), ((0x1040 + 42) << 16) | 0x1af4);
    assert_eq!(cfg(d, reg::REVISION, 1), 1);
    assert_eq!(d.config().bar(), Some((BAR, BAR_SIZE)));
    let caps = find_caps(d);
    let types: Vec<u8> = caps.iter().map(|c| c.0).collect();
    assert_eq!(types, vec![CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE]);
    for (_, offset, len) in caps {
        assert!(offset + u64::from(len) <= BAR_SIZE);
    }
    let cap = msix_cap(d);
    assert_eq!(cfg(d, cap + 2, 2), 2, "3 vectors: 2 queues and config");
    assert_eq!(cfg(d, cap + 4, 4), MSIX_TABLE as u32);
    assert_eq!(cfg(d, cap + 8, 4), MSIX_PBA as u32);
}

#[test]
fn a_linux_bring_up_activates_the_queues_and_each_interrupts_on_its_own_vector() {
    let mut r = rig();
    bring_up(&mut r);
    assert!(r.dev.is_active());
    assert_eq!(
        r.log.lock().unwrap().activations,
        vec![vec![
            (0, 16, 0x1000, 0x1400, 0x1800),
            (1, 8, 0x4000, 0x4400, 0x4800)
        ]]
    );
    assert_eq!(r.log.lock().unwrap().acked, Some(F_VERSION_1 | FEATURE_X));
    let int = r.log.lock().unwrap().interrupt.clone().unwrap();
    int.trigger(InterruptKind::Queue(1)).unwrap();
    int.trigger(InterruptKind::Queue(0)).unwrap();
    int.trigger(InterruptKind::Config).unwrap();
    assert_eq!(r.sent.take(), vec![msg(2, 2), msg(1, 1), msg(0, 0)]);
    // The ISR still tells, and reading it clears it.
    assert_eq!(rd(&mut r.dev, ISR, 1), u64::from(ISR_QUEUE | ISR_CONFIG));
    assert_eq!(rd(&mut r.dev, ISR, 1), 0);
    // A masked vector holds its interrupt until unmasked.
    wr(&mut r.dev, MSIX_TABLE + 16 + 12, 1, 4);
    int.trigger(InterruptKind::Queue(0)).unwrap();
    assert!(r.sent.take().is_empty());
    assert_eq!(rd(&mut r.dev, MSIX_PBA, 8), 0b10);
    wr(&mut r.dev, MSIX_TABLE + 16 + 12, 0, 4);
    assert_eq!(r.sent.take(), vec![msg(1, 1)]);
    assert_eq!(rd(&mut r.dev, MSIX_PBA, 8), 0);
}

#[test]
fn notifications_reach_the_queues_eventfds_registered_or_not() {
    let mut r = rig();
    assert_eq!(
        *r.bells.0.lock().unwrap(),
        vec![BAR + NOTIFY, BAR + NOTIFY + 4],
        "one doorbell per queue at the BAR"
    );
    bring_up(&mut r);
    // A notification that exits instead of hitting the ioeventfd.
    wr(&mut r.dev, NOTIFY + 4, 1, 2);
    wr(&mut r.dev, NOTIFY + 0x400, 0, 2);
    let log = r.log.lock().unwrap();
    assert_eq!(log.notify[1].read().unwrap(), 1);
    assert!(log.notify[0].read().is_err(), "nothing for queue 0");
}

#[test]
fn the_doorbells_follow_the_bar_and_leave_while_decoding_is_off() {
    let mut r = rig();
    let command = cfg(&r.dev, reg::COMMAND, 2) as u16;
    r.dev
        .write_config(reg::COMMAND, &(command & !COMMAND_MEMORY).to_le_bytes());
    assert!(r.bells.0.lock().unwrap().is_empty());
    let new = 0xe001_0000u64;
    r.dev.write_config(reg::BAR0, &(new as u32).to_le_bytes());
    r.dev.write_config(reg::BAR0 + 4, &0u32.to_le_bytes());
    r.dev.write_config(reg::COMMAND, &command.to_le_bytes());
    assert_eq!(
        *r.bells.0.lock().unwrap(),
        vec![new + NOTIFY, new + NOTIFY + 4]
    );
}

#[test]
fn vectors_outside_the_table_read_back_as_none() {
    let mut r = rig();
    wr(&mut r.dev, COMMON + common::CONFIG_MSIX_VECTOR, 3, 2);
    assert_eq!(
        rd(&mut r.dev, COMMON + common::CONFIG_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR)
    );
    wr(&mut r.dev, COMMON + common::QUEUE_SELECT, 1, 2);
    wr(&mut r.dev, COMMON + common::QUEUE_MSIX_VECTOR, 0x7ff, 2);
    assert_eq!(
        rd(&mut r.dev, COMMON + common::QUEUE_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR)
    );
    // A queue that does not exist reads size 0.
    wr(&mut r.dev, COMMON + common::QUEUE_SELECT, 2, 2);
    assert_eq!(rd(&mut r.dev, COMMON + common::QUEUE_SIZE, 2), 0);
    assert_eq!(rd(&mut r.dev, COMMON + common::NUM_QUEUES, 2), 2);
}

#[test]
fn a_queue_outside_guest_memory_is_refused_and_a_reset_clears_everything() {
    let mut r = rig();
    bring_up(&mut r);
    set_status(&mut r.dev, 0);
    assert_eq!(r.log.lock().unwrap().resets, 1);
    assert!(!r.dev.is_active());
    assert_eq!(
        rd(&mut r.dev, COMMON + common::CONFIG_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR)
    );
    // Again, with queue 0's used ring past the end of guest memory.
    set_status(&mut r.dev, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut r.dev, COMMON + common::DRIVER_FEATURE_SELECT, 1, 4);
    wr(&mut r.dev, COMMON + common::DRIVER_FEATURE, 1, 4);
    set_status(&mut r.dev, OK);
    wr(&mut r.dev, COMMON + common::QUEUE_DEVICE, MEM as u64 - 8, 8);
    wr(&mut r.dev, COMMON + common::QUEUE_ENABLE, 1, 2);
    set_status(&mut r.dev, OK | status::DRIVER_OK);
    assert_eq!(
        rd(&mut r.dev, COMMON + common::DEVICE_STATUS, 1),
        u64::from(OK | status::DEVICE_NEEDS_RESET)
    );
    assert_eq!(r.log.lock().unwrap().activations.len(), 1);
}

#[test]
fn device_config_reads_and_writes_reach_the_device() {
    let mut r = rig();
    let mut d = [0u8; 8];
    r.dev.read_bar(DEVICE, &mut d);
    assert_eq!(&d, b"ssvconf!");
    r.dev.write_bar(DEVICE + 4, b"CO");
    r.dev.read_bar(DEVICE + 3, &mut d[..4]);
    assert_eq!(&d[..4], b"cCOf");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any BAR and configuration traffic: no panic, activation only with
    /// valid queues (the test device checks), and a reset brings status 0.
    #[test]
    fn random_traffic_is_survived(
        ops in proptest::collection::vec(
            (any::<bool>(), prop_oneof![0u64..0x40, 0u64..BAR_SIZE + 0x10],
             any::<u64>(), 1usize..9, any::<bool>()), 1..200)
    ) {
        let mut r = rig();
        for (bar, off, v, len, write) in ops {
            let bytes = v.to_le_bytes();
            match (bar, write) {
                (true, true) => r.dev.write_bar(off, &bytes[..len]),
                (true, false) => { let mut d = vec![0u8; len]; r.dev.read_bar(off, &mut d); }
                (false, true) => r.dev.write_config(off as usize * 4 % 256, &bytes[..len.min(4)]),
                (false, false) => {}
            }
            if r.dev.is_active() {
                prop_assert!(r.dev.device_status() & status::DRIVER_OK != 0);
            }
        }
        set_status(&mut r.dev, 0);
        prop_assert_eq!(rd(&mut r.dev, COMMON + common::DEVICE_STATUS, 1), 0);
        prop_assert!(!r.dev.is_active());
    }
}
