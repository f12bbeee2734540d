//! Property tests: hostile queue contents never panic the device, never
//! make it write guest memory outside the buffers the chains mark
//! device-writable (and the used ring), and never change disk bytes except
//! where a write-like request names them. Well-formed requests of any
//! layout agree with a model of the disk.

use super::driver::{pattern, Driver, Irq, Layout};
use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use worker::QueueServer;

const QSIZE: u16 = 16;
const QUEUE_AT: u64 = 0x100;
/// Two regions with a hole between them; the queue lives below 0x1000,
/// buffers above (a buffer over the rings would change what later chains
/// are, which no static bound can follow).
const R1: (u64, u64) = (0, 0x10000);
const R2: (u64, u64) = (0x20000, 0x10000);
const DISK_LEN: usize = 64 * 1024;

fn hostile_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(R1.0), R1.1 as usize),
        (GuestAddress(R2.0), R2.1 as usize),
    ])
    .unwrap()
}

fn snapshot(mem: &GuestMemory) -> Vec<(u64, Vec<u8>)> {
    [R1, R2]
        .iter()
        .map(|&(at, len)| {
            let mut v = vec![0u8; len as usize];
            mem.read_slice(&mut v, GuestAddress(at)).unwrap();
            (at, v)
        })
        .collect()
}

#[derive(Clone, Debug)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Clone, Debug)]
struct Case {
    descs: Vec<RawDesc>,
    /// (descriptor, type, sector): a header written at that buffer.
    headers: Vec<(usize, u32, u64)>,
    avail: Vec<u16>,
    avail_idx: u16,
    used_event: u16,
    event_idx: bool,
    seed: u64,
    /// A chain at head 0 shaped like a request, so that some cases reach
    /// the disk; the rest of the table stays hostile.
    shaped: Option<Shaped>,
}

#[derive(Clone, Debug)]
struct Shaped {
    header: u64,
    data: u64,
    data_len: u32,
    data_write: bool,
    status: u64,
    kind: u32,
    sector: u64,
    /// Discard and write-zeroes ranges: (sector, sectors, flags).
    ranges: Vec<(u64, u32, u32)>,
}

/// Mostly inside memory, sometimes anywhere.
fn shaped_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0x1000u64..0xc000,
        3 => 0x20000u64..0x2c000,
        1 => addr(),
    ]
}

fn shaped() -> impl Strategy<Value = Shaped> {
    let end = (DISK_LEN / 512) as u64;
    (
        (shaped_addr(), shaped_addr(), shaped_addr()),
        prop_oneof![3 => (1u32..16).prop_map(|n| n * 512), 1 => len()],
        any::<bool>(),
        prop_oneof![3 => Just(T_OUT), 1 => Just(T_DISCARD), 1 => Just(T_WRITE_ZEROES), 2 => kind()],
        prop_oneof![3 => 0..end, 1 => sector()],
        prop::collection::vec(
            (
                0..end + 2,
                0u32..40,
                prop_oneof![4 => Just(0u32), 1 => 0u32..4],
            ),
            1..4,
        ),
    )
        .prop_map(
            |((header, data, status), data_len, data_write, kind, sector, ranges)| Shaped {
                header,
                data,
                data_len,
                data_write,
                status,
                kind,
                sector,
                ranges,
            },
        )
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0x1000u64..0xff00,
        3 => 0x20000u64..0x2ff00,
        1 => 0xfe00u64..0x10100,       // across the end of the first region
        1 => 0x10000u64..0x20000,      // the hole
        1 => 0x2fe00u64..0x30200,      // across the end of memory
        1 => any::<u64>(),
        1 => (u64::MAX - 0x1000)..=u64::MAX,
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(16),
        Just(15),
        Just(17),
        Just(512),
        Just(513),
        Just(4096),
        Just(32),
        0u32..0x3000,
        any::<u32>(),
    ]
}

fn flags() -> impl Strategy<Value = u16> {
    prop_oneof![
        8 => 0u16..8,
        1 => any::<u16>(),
    ]
}

fn desc() -> impl Strategy<Value = RawDesc> {
    (
        addr(),
        len(),
        flags(),
        prop_oneof![8 => 0u16..QSIZE, 1 => any::<u16>()],
    )
        .prop_map(|(addr, len, flags, next)| RawDesc {
            addr,
            len,
            flags,
            next,
        })
}

fn kind() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(T_IN),
        Just(T_OUT),
        Just(T_FLUSH),
        Just(T_GET_ID),
        Just(T_DISCARD),
        Just(T_WRITE_ZEROES),
        any::<u32>(),
    ]
}

fn sector() -> impl Strategy<Value = u64> {
    let end = (DISK_LEN / 512) as u64;
    prop_oneof![
        4 => 0..end,
        1 => Just(end - 1),
        1 => Just(end),
        1 => any::<u64>(),
        1 => Just(u64::MAX / 512 + 1),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(desc(), QSIZE as usize),
        prop::collection::vec((0usize..QSIZE as usize, kind(), sector()), 0..12),
        prop::collection::vec(
            prop_oneof![8 => 0u16..QSIZE, 1 => any::<u16>()],
            QSIZE as usize,
        ),
        prop_oneof![8 => 0u16..=QSIZE, 1 => any::<u16>()],
        any::<u16>(),
        any::<bool>(),
        any::<u64>(),
        prop::option::weighted(0.6, shaped()),
    )
        .prop_map(
            |(descs, headers, avail, avail_idx, used_event, event_idx, seed, shaped)| {
                let mut c = Case {
                    descs,
                    headers,
                    avail,
                    avail_idx,
                    used_event,
                    event_idx,
                    seed,
                    shaped,
                };
                if let Some(s) = &c.shaped {
                    let ranged = matches!(s.kind, T_DISCARD | T_WRITE_ZEROES);
                    let data_len = if ranged {
                        16 * s.ranges.len() as u32
                    } else {
                        s.data_len
                    };
                    let write = if s.data_write && !ranged {
                        DESC_F_WRITE
                    } else {
                        0
                    };
                    c.descs[0] = RawDesc {
                        addr: s.header,
                        len: 16,
                        flags: DESC_F_NEXT,
                        next: 1,
                    };
                    c.descs[1] = RawDesc {
                        addr: s.data,
                        len: data_len,
                        flags: DESC_F_NEXT | write,
                        next: 2,
                    };
                    c.descs[2] = RawDesc {
                        addr: s.status,
                        len: 1,
                        flags: DESC_F_WRITE,
                        next: 0,
                    };
                    c.avail[0] = 0;
                    c.avail_idx = c.avail_idx.max(1);
                }
                c
            },
        )
}

/// The descriptors reachable from `head` in at most a queue's worth of
/// steps: a superset of what the device may use of that chain.
fn reachable(descs: &[RawDesc], head: u16) -> Vec<RawDesc> {
    let mut out = Vec::new();
    let mut i = head;
    while usize::from(i) < descs.len() && out.len() < descs.len() {
        let d = &descs[usize::from(i)];
        out.push(d.clone());
        if d.flags & DESC_F_NEXT == 0 {
            break;
        }
        i = d.next;
    }
    out
}

fn in_memory(addr: u64, len: u32) -> bool {
    let end = addr.checked_add(u64::from(len));
    [R1, R2]
        .iter()
        .any(|&(at, n)| addr >= at && end.is_some_and(|e| e <= at + n))
}

/// Disk ranges a chain could ask to change: for a write, from its sector
/// over everything it offers; for discard or write zeroes, its ranges.
fn writable_disk_ranges(mem: &[(u64, Vec<u8>)], chain: &[RawDesc]) -> Vec<(u64, u64)> {
    let mut bytes = Vec::new();
    for d in chain.iter().filter(|d| d.flags & DESC_F_WRITE == 0) {
        // A buffer outside memory fails the request, so it writes nothing.
        // An empty one may sit at a region's very end, so it is found by
        // its whole range, not by its first byte.
        let end = d.addr.saturating_add(u64::from(d.len));
        let Some((at, region)) = mem
            .iter()
            .find(|(at, r)| d.addr >= *at && end <= at + r.len() as u64)
        else {
            return Vec::new();
        };
        let start = (d.addr - at) as usize;
        bytes.extend_from_slice(&region[start..start + d.len as usize]);
    }
    if bytes.len() < 16 {
        return Vec::new();
    }
    let kind = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    match kind {
        T_OUT => vec![(sector.saturating_mul(512), (bytes.len() - 16) as u64)],
        T_DISCARD | T_WRITE_ZEROES => bytes[16..]
            .chunks_exact(16)
            .map(|r| {
                let s = u64::from_le_bytes(r[0..8].try_into().unwrap());
                let n = u32::from_le_bytes(r[8..12].try_into().unwrap());
                (s.saturating_mul(512), u64::from(n) * 512)
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn within(ranges: &[(u64, u64)], at: u64) -> bool {
    ranges.iter().any(|&(s, n)| at >= s && at - s < n)
}

fn server_for(dev: &Block, mem: &GuestMemory, layout: Layout) -> QueueServer {
    let q = crate::devices::virtio::ActiveQueue {
        index: 0,
        queue: layout.queue(),
        notify: vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
    };
    let irq: Arc<dyn VirtioInterrupt> = Arc::new(Irq::default());
    dev.server(mem, &irq, q).0
}

fn run_hostile(dir: &Path, c: &Case) -> Result<(), TestCaseError> {
    let mem = hostile_memory();
    // Guest memory full of noise, then the case's queue and headers.
    for &(at, n) in &[R1, R2] {
        mem.write_slice(&pattern(c.seed ^ at, n as usize), GuestAddress(at))
            .unwrap();
    }
    let layout = Layout::new(QUEUE_AT, QSIZE);
    for (i, d) in c.descs.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&d.next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(layout.desc.0 + 16 * i as u64))
            .unwrap();
    }
    for &(i, kind, sector) in &c.headers {
        let d = &c.descs[i];
        if d.addr >= 0x1000 && in_memory(d.addr, 16) {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&h, GuestAddress(d.addr)).unwrap();
        }
    }
    if let Some(s) = &c.shaped {
        if s.header >= 0x1000 && in_memory(s.header, 16) {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&s.kind.to_le_bytes());
            h[8..16].copy_from_slice(&s.sector.to_le_bytes());
            mem.write_slice(&h, GuestAddress(s.header)).unwrap();
        }
        let mut r = Vec::new();
        for (sector, n, flags) in &s.ranges {
            r.extend_from_slice(&sector.to_le_bytes());
            r.extend_from_slice(&n.to_le_bytes());
            r.extend_from_slice(&flags.to_le_bytes());
        }
        if matches!(s.kind, T_DISCARD | T_WRITE_ZEROES)
            && s.data >= 0x1000
            && in_memory(s.data, r.len() as u32)
        {
            mem.write_slice(&r, GuestAddress(s.data)).unwrap();
        }
    }
    let avail = layout.avail.0;
    mem.write_obj(0u16, GuestAddress(avail)).unwrap();
    mem.write_obj(c.avail_idx.to_le(), GuestAddress(avail + 2))
        .unwrap();
    for (i, h) in c.avail.iter().enumerate() {
        mem.write_obj(h.to_le(), GuestAddress(avail + 4 + 2 * i as u64))
            .unwrap();
    }
    mem.write_obj(
        c.used_event.to_le(),
        GuestAddress(avail + 4 + 2 * u64::from(QSIZE)),
    )
    .unwrap();
    let (used_at, used_len) = layout.used_range();
    mem.write_slice(&vec![0u8; used_len as usize], GuestAddress(used_at))
        .unwrap();

    let disk_before = pattern(c.seed, DISK_LEN);
    let disk = file_disk(dir, "hostile", &disk_before, false);
    let mut dev = Block::new(disk, BlockOptions::new("h"), Fence::new().unwrap()).unwrap();
    let all = dev.features();
    dev.ack_features(if c.event_idx {
        all
    } else {
        all & !F_RING_EVENT_IDX
    });

    let mem_before = snapshot(&mem);
    let mut server = server_for(&dev, &mem, layout);
    server.serve();
    server.serve();
    drop(server);
    drop(dev);

    // Guest memory: only the used ring and device-writable buffers.
    let mut allowed: Vec<(u64, u64)> = vec![(used_at, used_len)];
    let mut disk_allowed = Vec::new();
    for head in 0..QSIZE {
        let chain = reachable(&c.descs, head);
        for d in chain.iter().filter(|d| d.flags & DESC_F_WRITE != 0) {
            allowed.push((d.addr, u64::from(d.len)));
        }
        disk_allowed.extend(writable_disk_ranges(&mem_before, &chain));
    }
    for ((at, before), (_, after)) in mem_before.iter().zip(snapshot(&mem).iter()) {
        for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
            let addr = at + i as u64;
            prop_assert!(
                b == a || within(&allowed, addr),
                "guest byte {addr:#x} changed outside the writable buffers"
            );
        }
    }
    let disk_after = std::fs::read(dir.join("hostile")).unwrap();
    prop_assert_eq!(disk_after.len(), DISK_LEN, "the disk file changed size");
    for (i, (b, a)) in disk_before.iter().zip(disk_after.iter()).enumerate() {
        prop_assert!(
            b == a || within(&disk_allowed, i as u64),
            "disk byte {} changed with no write naming it",
            i
        );
    }
    Ok(())
}

/// The checker itself once panicked on an empty buffer at the end of a
/// memory region (CI, 2026-11-24): such a buffer adds nothing, and the rest
/// of the chain still names the bytes it may write.
#[test]
fn an_empty_buffer_at_a_regions_end_adds_nothing_to_a_write() {
    let mut r2 = vec![0u8; R2.1 as usize];
    r2[0..4].copy_from_slice(&T_OUT.to_le_bytes());
    r2[8..16].copy_from_slice(&3u64.to_le_bytes());
    let mem = vec![(R1.0, vec![0u8; R1.1 as usize]), (R2.0, r2)];
    let desc = |addr, len| RawDesc {
        addr,
        len,
        flags: DESC_F_NEXT,
        next: 0,
    };
    let chain = [desc(R2.0, 16), desc(R2.0 + 16, 512), desc(R1.0 + R1.1, 0)];
    assert_eq!(writable_disk_ranges(&mem, &chain), vec![(3 * 512, 512)]);
}

#[test]
fn hostile_queues_stay_inside_their_buffers_and_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |c| run_hostile(dir.path(), &c))
        .unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        sector: u64,
        sectors: u64,
        seed: u64,
    },
    Read {
        sector: u64,
        sectors: u64,
    },
    Zero {
        sector: u64,
        sectors: u32,
        discard: bool,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let end = (DISK_LEN / 512) as u64;
    prop_oneof![
        4 => (0..end, 1u64..32, any::<u64>()).prop_map(|(s, n, seed)| Op::Write { sector: s, sectors: n, seed }),
        3 => (0..end, 1u64..32).prop_map(|(s, n)| Op::Read { sector: s, sectors: n }),
        1 => (0..end, 1u32..32, any::<bool>()).prop_map(|(s, n, d)| Op::Zero { sector: s, sectors: n, discard: d }),
        1 => Just(Op::Flush),
    ]
}

fn run_model(dir: &Path, ops: &[Op], seg_size: usize) -> Result<(), TestCaseError> {
    let mem = driver::memory(4 << 20);
    let disk = file_disk(dir, "model", &vec![0u8; DISK_LEN], false);
    let mut dev = Block::new(disk, BlockOptions::new("m"), Fence::new().unwrap()).unwrap();
    dev.ack_features(dev.features());
    let (mut d, q) = Driver::new(&mem, 0, 0x1000, 256, (1 << 20, 3 << 20));
    d.seg_size = seg_size;
    let irq: Arc<dyn VirtioInterrupt> = Arc::new(Irq::default());
    let (mut server, _) = dev.server(&mem, &irq, q);
    let mut model = vec![0u8; DISK_LEN];
    let cap = (DISK_LEN / 512) as u64;
    let mut step = |d: &mut Driver, kind, sector, out: &[u8], in_len| {
        let p = d.submit(kind, sector, out, in_len);
        server.serve();
        let (id, used) = d
            .try_next_used(std::time::Duration::ZERO)
            .expect("completed");
        assert_eq!(id, u32::from(p.head));
        d.result(&p, used)
    };
    for op in ops {
        match *op {
            Op::Write {
                sector,
                sectors,
                seed,
            } => {
                let data = pattern(seed, (sectors * 512) as usize);
                let r = step(&mut d, T_OUT, sector, &data, 0);
                if sector + sectors <= cap {
                    prop_assert_eq!(r.status, S_OK);
                    let at = sector as usize * 512;
                    model[at..at + data.len()].copy_from_slice(&data);
                } else {
                    prop_assert_eq!(r.status, S_IOERR);
                }
            }
            Op::Read { sector, sectors } => {
                let r = step(&mut d, T_IN, sector, &[], (sectors * 512) as usize);
                if sector + sectors <= cap {
                    prop_assert_eq!(r.status, S_OK);
                    prop_assert_eq!(r.used_len as u64, sectors * 512 + 1);
                    let at = sector as usize * 512;
                    prop_assert!(r.data == model[at..at + r.data.len()]);
                } else {
                    prop_assert_eq!(r.status, S_IOERR);
                }
            }
            Op::Zero {
                sector,
                sectors,
                discard,
            } => {
                let mut out = Vec::new();
                out.extend_from_slice(&sector.to_le_bytes());
                out.extend_from_slice(&sectors.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                let kind = if discard { T_DISCARD } else { T_WRITE_ZEROES };
                let r = step(&mut d, kind, 0, &out, 0);
                if sector + u64::from(sectors) <= cap {
                    prop_assert_eq!(r.status, S_OK);
                    let at = sector as usize * 512;
                    model[at..at + sectors as usize * 512].fill(0);
                } else {
                    prop_assert_eq!(r.status, S_IOERR);
                }
            }
            Op::Flush => {
                prop_assert_eq!(step(&mut d, T_FLUSH, 0, &[], 0).status, S_OK);
            }
        }
    }
    prop_assert!(std::fs::read(dir.join("model")).unwrap() == model);
    Ok(())
}

#[test]
fn well_formed_requests_of_any_layout_agree_with_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (prop::collection::vec(op(), 1..24), 1usize..5000);
    runner
        .run(&strategy, |(ops, seg)| run_model(dir.path(), &ops, seg))
        .unwrap();
}

#[test]
fn config_reads_at_any_offset_and_length() {
    let dir = tempfile::tempdir().unwrap();
    let disk = file_disk(dir.path(), "c", &vec![0u8; DISK_LEN], false);
    let dev = Block::new(disk, BlockOptions::new("c"), Fence::new().unwrap()).unwrap();
    let full = dev.config().to_bytes();
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(any::<u64>(), 0usize..80, 0u64..100),
            |(far, len, near)| {
                for off in [far, near] {
                    let mut data = vec![0x55u8; len];
                    dev.read_config(off, &mut data);
                    for (i, b) in data.iter().enumerate() {
                        let want = off
                            .checked_add(i as u64)
                            .and_then(|a| full.get(a as usize).copied())
                            .unwrap_or(0);
                        prop_assert_eq!(*b, want);
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}
