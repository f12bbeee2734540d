//! The transport against a small recording device, and random register
//! writes that must never panic nor activate a device with a bad queue.

use super::*;
use crate::devices::virtio::test_device::{test_device, Log, FEATURE_X, MEM};
use crate::devices::virtio::transport::status;
use crate::devices::virtio::F_VERSION_1;
use proptest::prelude::*;
use std::sync::Mutex;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

fn transport(irq: Option<EventFd>) -> (MmioTransport, Arc<Mutex<Log>>) {
    let (dev, mem, log) = test_device();
    (MmioTransport::new(dev, mem, irq).unwrap(), log)
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// A driver's steps up to FEATURES_OK, accepting `features`.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    wr(t, 0x70, 0);
    wr(t, 0x70, status::ACKNOWLEDGE);
    wr(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, 0x24, 0);
    wr(t, 0x20, features as u32);
    wr(t, 0x24, 1);
    wr(t, 0x20, (features >> 32) as u32);
    wr(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    rd(t, 0x70)
}

fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, desc: u64, avail: u64, used: u64) {
    wr(t, 0x30, sel);
    wr(t, 0x38, size);
    for (off, a) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
        wr(t, off, a as u32);
        wr(t, off + 4, (a >> 32) as u32);
    }
    wr(t, 0x44, 1);
}

const OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

#[test]
fn identity_registers() {
    let (mut t, _) = transport(None);
    assert_eq!(rd(&mut t, 0x00), 0x7472_6976);
    assert_eq!(rd(&mut t, 0x04), 2);
    assert_eq!(rd(&mut t, 0x08), 42);
    wr(&mut t, 0x14, 1);
    assert_eq!(rd(&mut t, 0x10), 1, "VERSION_1 is bit 32");
    wr(&mut t, 0x14, 0);
    assert_eq!(rd(&mut t, 0x10), FEATURE_X as u32);
    wr(&mut t, 0x14, 7);
    assert_eq!(rd(&mut t, 0x10), 0);
    wr(&mut t, 0x30, 1);
    assert_eq!(rd(&mut t, 0x34), 8);
    wr(&mut t, 0x30, 2);
    assert_eq!(rd(&mut t, 0x34), 0, "no third queue");
    // Registers are 32-bit: a 2-byte read of the magic reads zero.
    let mut two = [0xffu8; 2];
    t.read(0, &mut two);
    assert_eq!(two, [0, 0]);
}

#[test]
fn features_ok_only_for_a_subset_with_version_1() {
    let (mut t, log) = transport(None);
    assert_eq!(
        negotiate(&mut t, FEATURE_X),
        status::ACKNOWLEDGE | status::DRIVER
    );
    assert_eq!(
        negotiate(&mut t, F_VERSION_1 | 1 << 5),
        status::ACKNOWLEDGE | status::DRIVER
    );
    assert_eq!(log.lock().unwrap().acked, None);
    assert_eq!(negotiate(&mut t, F_VERSION_1 | FEATURE_X), OK);
    assert_eq!(log.lock().unwrap().acked, Some(F_VERSION_1 | FEATURE_X));
    // Features are frozen after FEATURES_OK.
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, 0);
    assert_eq!(t.state.driver_features(), F_VERSION_1 | FEATURE_X);
}

#[test]
fn driver_ok_activates_with_the_queues_set_up_then_notify_and_interrupt_work() {
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let (mut t, log) = transport(Some(irq.try_clone().unwrap()));
    assert_eq!(negotiate(&mut t, F_VERSION_1), OK);
    setup_queue(&mut t, 0, 16, 0x1000, 0x2000, 0x3000);
    // Queue 1 left unready: not handed over.
    wr(&mut t, 0x70, OK | status::DRIVER_OK);
    assert_eq!(rd(&mut t, 0x70), OK | status::DRIVER_OK);
    assert!(t.is_active());
    {
        let log = log.lock().unwrap();
        assert_eq!(log.activations, vec![vec![(0, 16, 0x1000, 0x2000, 0x3000)]]);
    }
    // Queue registers are frozen once the device runs.
    wr(&mut t, 0x30, 1);
    wr(&mut t, 0x38, 4);
    wr(&mut t, 0x44, 1);
    assert_eq!(rd(&mut t, 0x44), 0);
    // A notification written through the register reaches the device's eventfd.
    wr(&mut t, QUEUE_NOTIFY, 0);
    wr(&mut t, QUEUE_NOTIFY, 9);
    assert_eq!(log.lock().unwrap().notify[0].read().unwrap(), 1);
    assert!(t.notify_fds()[1].read().is_err(), "nothing for queue 1");
    // The device's interrupt shows in the status register and on the irqfd.
    let int = log.lock().unwrap().interrupt.clone().unwrap();
    int.trigger(InterruptKind::Queue(0)).unwrap();
    assert_eq!(rd(&mut t, 0x60), INT_VRING);
    assert_eq!(irq.read().unwrap(), 1);
    int.trigger(InterruptKind::Config).unwrap();
    assert_eq!(rd(&mut t, 0x60), INT_VRING | INT_CONFIG);
    wr(&mut t, 0x64, INT_VRING);
    assert_eq!(rd(&mut t, 0x60), INT_CONFIG);
}

#[test]
fn a_queue_outside_guest_memory_is_refused_with_needs_reset() {
    let (mut t, log) = transport(None);
    assert_eq!(negotiate(&mut t, F_VERSION_1), OK);
    setup_queue(&mut t, 0, 16, 0x1000, 0x2000, MEM as u64 - 8);
    wr(&mut t, 0x70, OK | status::DRIVER_OK);
    assert_eq!(rd(&mut t, 0x70), OK | status::DEVICE_NEEDS_RESET);
    assert_eq!(rd(&mut t, 0x60), INT_CONFIG);
    assert!(!t.is_active());
    assert!(log.lock().unwrap().activations.is_empty());
}

#[test]
fn invalid_sizes_and_driver_ok_before_features_ok_are_ignored() {
    let (mut t, log) = transport(None);
    wr(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x38, 32); // above the maximum
    wr(&mut t, 0x38, 12); // not a power of two
    wr(&mut t, 0x38, 0x1_0008); // not 16 bits
    assert_eq!(t.state.queue(0).unwrap().size(), 16);
    wr(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(rd(&mut t, 0x70), status::ACKNOWLEDGE | status::DRIVER);
    assert!(log.lock().unwrap().activations.is_empty());
}

#[test]
fn reset_resets_the_device_and_every_register() {
    let (mut t, log) = transport(None);
    negotiate(&mut t, F_VERSION_1);
    setup_queue(&mut t, 1, 4, 0x4000, 0x5000, 0x6000);
    wr(&mut t, 0x70, OK | status::DRIVER_OK);
    assert_eq!(
        log.lock().unwrap().activations,
        vec![vec![(1, 4, 0x4000, 0x5000, 0x6000)]]
    );
    wr(&mut t, 0x70, 0);
    assert_eq!(log.lock().unwrap().resets, 1);
    assert_eq!(rd(&mut t, 0x70), 0);
    assert!(!t.is_active());
    wr(&mut t, 0x30, 1);
    assert_eq!(rd(&mut t, 0x44), 0);
    assert_eq!(
        t.state.queue(1).unwrap().size(),
        8,
        "size back to the maximum"
    );
    // The device can be brought up again.
    assert_eq!(negotiate(&mut t, F_VERSION_1), OK);
    setup_queue(&mut t, 0, 2, 0x7000, 0x7100, 0x7200);
    wr(&mut t, 0x70, OK | status::DRIVER_OK);
    assert_eq!(log.lock().unwrap().activations.len(), 2);
}

#[test]
fn config_space_reads_and_writes_reach_the_device() {
    let (mut t, _) = transport(None);
    let mut d = [0u8; 8];
    t.read(0x100, &mut d);
    assert_eq!(&d, b"ssvconf!");
    t.write(0x104, b"CO");
    let mut d = [0u8; 4];
    t.read(0x103, &mut d);
    assert_eq!(&d, b"cCOf");
    t.read(0x106, &mut d);
    assert_eq!(&d, b"f!\0\0");
}

#[derive(Debug, Clone)]
enum Op {
    Read(u64, usize),
    Write(u64, Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    // Offsets near the registers most of the time, anywhere sometimes.
    let offset = prop_oneof![
        4 => (0u64..0x40).prop_map(|r| r * 4),
        1 => 0u64..0x1000,
        1 => any::<u64>(),
    ];
    let value = prop_oneof![
        any::<u32>(),
        0u32..16,
        Just(0u32),
        Just(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK),
        (0u32..0x10).prop_map(|p| p << 12),
        Just(MEM as u32 - 4),
    ];
    prop_oneof![
        (offset.clone(), 1usize..9).prop_map(|(o, n)| Op::Read(o, n)),
        (offset.clone(), value).prop_map(|(o, v)| Op::Write(o, v.to_le_bytes().to_vec())),
        (offset, proptest::collection::vec(any::<u8>(), 0..9)).prop_map(|(o, d)| Op::Write(o, d)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the guest writes: no panic, a device is activated only
    /// with valid, ready queues (the test device checks), the interrupt
    /// status holds only its two bits, and a reset always brings status 0.
    #[test]
    fn random_register_traffic_is_survived(ops in proptest::collection::vec(op(), 1..200)) {
        let (mut t, log) = transport(None);
        for op in ops {
            match op {
                Op::Read(o, n) => { let mut d = vec![0u8; n]; t.read(o, &mut d); }
                Op::Write(o, d) => t.write(o, &d),
            }
            prop_assert_eq!(rd(&mut t, 0x60) & !(INT_VRING | INT_CONFIG), 0);
            prop_assert_eq!(rd(&mut t, 0), MAGIC);
            if t.is_active() {
                prop_assert!(t.device_status() & status::DRIVER_OK != 0);
            }
        }
        let activations = log.lock().unwrap().activations.len();
        wr(&mut t, 0x70, 0);
        prop_assert_eq!(rd(&mut t, 0x70), 0);
        prop_assert!(!t.is_active());
        if activations > 0 {
            prop_assert!(log.lock().unwrap().resets >= 1, "an activated device was reset");
        }
    }
}
