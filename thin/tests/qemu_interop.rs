//! Images that real QEMU tools made, read and written through `thin`, and
//! images thin made, read by QEMU tools. Everything lives in a [`DirStore`]
//! (one file per "LV", like `/dev/VG/`), so no root is needed.
//!
//! - qemu-img/qemu-io images of every cluster size (512 B … 2 MiB) and
//!   refcount width (1, 16, 64 bits), with unaligned writes, zero clusters,
//!   discarded ranges and compressed clusters, and backing chains with
//!   relative names: every byte thin reads equals `qemu-img convert -O raw`.
//! - thin writes into those images; `qemu-img check` is clean and
//!   `qemu-img compare` matches the expected bytes.
//! - an image ssv made over a qemu-made chain: `qemu-img info --backing-chain`
//!   resolves the relative backing names from any working directory; a qemu
//!   layer over an ssv-made base reads back through thin.
//! - features thin does not implement (extended L2, zstd, a dirty image,
//!   internal snapshots) are refused at open without touching the image.
//!
//! Tests marked FINDING fail today and show a defect (see their comments).
//! Without qemu-img every test prints "SKIPPED: qemu-img not installed".

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use thin::{CreateOptions, DirStore, GrowthPolicy, LvStore, OpenOptions, StoreExtender, Volume};

const MIB: u64 = 1 << 20;
/// Virtual size of most test images.
const SIZE: u64 = 16 * MIB;

mod common;
use common::{skip_unless_qemu, tool, tool_ok};

/// `qemu-io -f qcow2 -c CMD… IMAGE` in `dir`.
fn qemu_io(dir: &Path, image: &str, cmds: &[String]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(image);
    let text = tool_ok(dir, "qemu-io", &args);
    assert!(
        !text.contains("error") && !text.contains("failed"),
        "qemu-io {image}: {text}"
    );
}

/// What QEMU reads from the image (through its backing chain).
fn qemu_raw(dir: &Path, image: &str) -> Vec<u8> {
    let raw = format!("{image}.qemu.raw");
    tool_ok(
        dir,
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", image, &raw],
    );
    let bytes = std::fs::read(dir.join(&raw)).unwrap();
    std::fs::remove_file(dir.join(&raw)).unwrap();
    bytes
}

/// What thin reads from the volume, in pieces of `chunk` bytes.
fn try_thin_read(store: &dyn LvStore, top: &str, chunk: usize) -> Result<Vec<u8>, String> {
    let v = Volume::open(store, top, &OpenOptions::read_only())
        .map_err(|e| format!("thin cannot open {top}: {e}"))?;
    let size = v.virtual_size() as usize;
    let mut out = vec![0u8; size];
    for (i, piece) in out.chunks_mut(chunk).enumerate() {
        v.read(piece, (i * chunk) as u64)
            .map_err(|e| format!("{top}: read at {}: {e}", i * chunk))?;
    }
    Ok(out)
}

fn thin_read(store: &dyn LvStore, top: &str, chunk: usize) -> Vec<u8> {
    try_thin_read(store, top, chunk).unwrap_or_else(|e| panic!("{e}"))
}

/// Panics with the first differing range.
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
    if got == want {
        return;
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let end = (i..got.len())
            .find(|&j| got[j] == want[j])
            .unwrap_or(got.len());
        panic!(
            "{what}: bytes {i}..{end} differ: thin read {:02x?}…, expected {:02x?}…",
            &got[i..(i + 16).min(end)],
            &want[i..(i + 16).min(end)]
        );
    }
}

/// `qemu-img check` finds nothing (no corruption, no leaks).
fn check_clean(dir: &Path, image: &str) {
    let (ok, text) = tool(dir, "qemu-img", &["check", "-f", "qcow2", image]);
    assert!(
        ok && text.contains("No errors were found"),
        "qemu-img check {image}: {text}"
    );
}

/// `qemu-img compare` of the image against `expect` as raw bytes.
fn compare(dir: &Path, image: &str, expect: &[u8]) {
    let raw = format!("{image}.expect.raw");
    std::fs::write(dir.join(&raw), expect).unwrap();
    let (ok, text) = tool(
        dir,
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", image, &raw],
    );
    assert!(ok, "qemu-img compare {image}: {text}");
    std::fs::remove_file(dir.join(&raw)).unwrap();
}

fn store(dir: &Path) -> Arc<dyn LvStore> {
    Arc::new(DirStore::new(dir, MIB))
}

/// qemu-io commands covering aligned and unaligned writes, zero clusters,
/// discards and a compressed cluster, for an image of `size` bytes with
/// `cs`-byte clusters. Patterns are chosen per `seed`.
fn qemu_script(size: u64, cs: u64, seed: u8) -> Vec<String> {
    let p = |k: u8| seed.wrapping_mul(16).wrapping_add(k) | 1;
    let mut c = vec![
        format!("write -P {:#x} 0 4096", p(1)),
        // Unaligned offset and length.
        format!("write -P {:#x} 1000 5000", p(2)),
        // A few bytes across a 64 KiB boundary.
        format!("write -P {:#x} 65535 3", p(3)),
        // Across a 2 MiB boundary, unaligned at both ends.
        format!("write -P {:#x} 2096999 300001", p(4)),
        // Zero clusters (whole clusters for every size up to 1 MiB).
        format!("write -z {} {}", 3 * MIB, MIB),
        // Data, then zeroes inside it (a partial zero write for big clusters).
        format!("write -P {:#x} {} {}", p(5), 4 * MIB, 2 * MIB),
        format!("write -z {} 8192", 4 * MIB + 4096),
        format!("write -z {} 777", 5 * MIB + 1234),
        // Data, then discarded whole clusters (read as zeroes: no backing).
        format!("write -P {:#x} {} {}", p(6), 6 * MIB, 2 * MIB),
        format!("discard {} {}", 6 * MIB, 2 * MIB),
        // Discard of part of a cluster (QEMU may ignore it, or zero it).
        format!("discard {} 100", 1000),
        // A compressed cluster (cluster-aligned by qemu-io's rules).
        format!("write -c -P {:#x} {} {}", p(7), 8 * MIB, cs),
        // The last sector.
        format!("write -P {:#x} {} 512", p(8), size - 512),
    ];
    // Many small unaligned writes, scattered.
    let mut x = u64::from(seed) * 7919 + 1;
    for i in 0..24u8 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 16) % (size - 70_000);
        let len = 1 + (x >> 40) % 66_000;
        c.push(format!("write -P {:#x} {off} {len}", p(9).wrapping_add(i)));
    }
    c
}

const REFCOUNT_BITS: [u32; 3] = [1, 16, 64];

/// (a) One cluster size, every refcount width, written by qemu-io, and the
/// same images compressed by `qemu-img convert -c`: thin reads exactly what
/// QEMU reads. (b) thin then writes into each of them; QEMU agrees.
fn qemu_made_images(cs: u64) {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let st = store(dir);
    let ext: Arc<dyn thin::Extender> = Arc::new(StoreExtender(st.clone()));
    for (seed, rb) in REFCOUNT_BITS.into_iter().enumerate() {
        let seed = seed as u8 + cs.trailing_zeros() as u8 * 3;
        let plain = format!("q{cs}r{rb}");
        let packed = format!("z{cs}r{rb}");
        let opts = format!("cluster_size={cs},refcount_bits={rb}");
        let size = SIZE.to_string();
        tool_ok(
            dir,
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", &opts, &plain, &size],
        );
        qemu_io(dir, &plain, &qemu_script(SIZE, cs, seed));
        tool_ok(
            dir,
            "qemu-img",
            &[
                "convert", "-c", "-f", "qcow2", "-O", "qcow2", "-o", &opts, &plain, &packed,
            ],
        );
        for name in [&plain, &packed] {
            let want = qemu_raw(dir, name);
            // Odd-sized pieces, so reads straddle clusters too.
            let got = thin_read(&*st, name, 3 * 65536 + 512);
            assert_same(&format!("(a) {name} read through thin"), &got, &want);

            // (b) thin writes into QEMU's image.
            let mut expect = want;
            thin_writes(&*st, name, ext.clone(), cs, &mut expect, seed);
            check_clean(dir, name);
            compare(dir, name, &expect);
            let again = thin_read(&*st, name, 4 * MIB as usize);
            assert_same(&format!("(b) {name} reread through thin"), &again, &expect);
        }
    }
    eprintln!("qemu-made images, {cs}-byte clusters: {:?}", t0.elapsed());
}

#[test]
fn qemu_images_512_byte_clusters() {
    skip_unless_qemu!();
    qemu_made_images(512);
}

#[test]
fn qemu_images_4k_clusters() {
    skip_unless_qemu!();
    qemu_made_images(4096);
}

#[test]
fn qemu_images_64k_clusters() {
    skip_unless_qemu!();
    qemu_made_images(65536);
}

#[test]
fn qemu_images_2m_clusters() {
    skip_unless_qemu!();
    qemu_made_images(2 * MIB);
}

/// Writes through thin over everything the QEMU script made: unaligned
/// writes over data, zero, discarded, compressed and unallocated clusters;
/// zeroes; a discard of whole clusters; and mirrors them into `expect`.
fn thin_writes(
    st: &dyn LvStore,
    name: &str,
    ext: Arc<dyn thin::Extender>,
    cs: u64,
    expect: &mut [u8],
    seed: u8,
) {
    // An explicit cap: the default one is too small for rewriting compressed
    // clusters (`rewriting_a_compressed_image_fits_the_default_cap`).
    let oo = OpenOptions {
        policy: GrowthPolicy {
            cap: Some(4 * SIZE + 64 * MIB),
            ..Default::default()
        },
        ..OpenOptions::default().with_extender(ext)
    };
    let v = Volume::open(st, name, &oo)
        .unwrap_or_else(|e| panic!("thin cannot open {name} read-write: {e}"));
    let size = v.virtual_size();
    let mut put = |v: &Volume, off: u64, len: usize, fill: u8| {
        let buf: Vec<u8> = (0..len)
            .map(|i| fill ^ (i as u8).wrapping_mul(31))
            .collect();
        v.write(&buf, off)
            .unwrap_or_else(|e| panic!("{name}: write {len} at {off}: {e}"));
        expect[off as usize..off as usize + len].copy_from_slice(&buf);
    };
    let f = 0xa0 ^ seed;
    put(&v, 3, 10, f); // inside the first data cluster, unaligned
    put(&v, 3 * MIB + 100, 3000, f ^ 1); // into zero clusters
    put(&v, 4 * MIB + 4000, 9000, f ^ 2); // over data and a zeroed part
    put(&v, 6 * MIB + 511, 513, f ^ 3); // into a discarded cluster
    put(&v, 8 * MIB + cs / 2 - 7, 14, f ^ 4); // inside the compressed cluster
    put(&v, 8 * MIB + cs - 5, 10, f ^ 5); // across its end
    put(&v, 12 * MIB + 12345, 200_000, f ^ 6); // unallocated, unaligned
    put(&v, size - 700, 700, f ^ 7); // the end of the disk
    v.write_zeroes(2 * MIB + 100, 5000)
        .unwrap_or_else(|e| panic!("{name}: write_zeroes: {e}"));
    expect[(2 * MIB + 100) as usize..(2 * MIB + 5100) as usize].fill(0);
    // Whole clusters (for every cluster size) of written data.
    let d = 10 * MIB;
    v.discard(d, 2 * MIB)
        .unwrap_or_else(|e| panic!("{name}: discard: {e}"));
    expect[d as usize..(d + 2 * MIB) as usize].fill(0);
    v.flush().unwrap();
}

/// (a) Chains qemu-img made in the directory, with relative backing names,
/// mixed cluster sizes, a top larger than its base, zeroes and discards over
/// backing data: thin reads each layer as QEMU does. (b) thin writes into
/// the top (copy-on-write from the chain); QEMU agrees.
#[test]
fn qemu_made_chains_read_and_write_through_thin() {
    skip_unless_qemu!();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let st = store(dir);
    let create = |args: &[&str]| {
        let mut a = vec!["create", "-q", "-f", "qcow2"];
        a.extend_from_slice(args);
        tool_ok(dir, "qemu-img", &a);
    };
    create(&["-o", "cluster_size=65536", "base", "16M"]);
    qemu_io(dir, "base", &qemu_script(SIZE, 65536, 1));
    // Smaller clusters over larger ones, relative backing name.
    create(&[
        "-o",
        "cluster_size=4096",
        "-b",
        "base",
        "-F",
        "qcow2",
        "mid",
    ]);
    qemu_io(
        dir,
        "mid",
        &[
            // Compressed first: later allocations pad the file to a whole
            // cluster (see `qemu_files_of_unaligned_length` for the other case).
            format!("write -c -P 0x5c {} 4096", 2 * MIB),
            "write -P 0x5a 1000 3000".into(),
            "write -z 0 512".into(),
            format!("write -z {} {}", 4 * MIB, 65536),
            format!("discard {} {}", 4 * MIB + 65536, 65536),
            format!("write -P 0x5b {} {}", 9 * MIB - 3, 70_000),
        ],
    );
    // Larger clusters over smaller ones, a larger virtual size, refcount_bits=1.
    create(&[
        "-o",
        "cluster_size=2097152,refcount_bits=1",
        "-b",
        "mid",
        "-F",
        "qcow2",
        "top",
        "20M",
    ]);
    qemu_io(
        dir,
        "top",
        &[
            format!("write -P 0x6a {} 4096", 2 * MIB + 4096),
            format!("write -z {} {}", 12 * MIB, 2 * MIB),
            format!("write -P 0x6b {} 100", 17 * MIB + 5),
        ],
    );
    // A layer whose header has no backing-format extension (qemu-img no
    // longer makes those, older ones did): thin drops it from a qemu layer.
    create(&["-b", "top", "-F", "qcow2", "nofmt"]);
    qemu_io(dir, "nofmt", &["write -P 0x7c 333 33".into()]);
    thin::layer::set_backing(
        &*st.open("nofmt").unwrap(),
        Some(thin::format::Backing {
            name: "top".into(),
            format: None,
        }),
    )
    .unwrap();
    let h = thin::layer::read_header(&*st.open("nofmt").unwrap()).unwrap();
    assert_eq!(h.backing.as_ref().map(|b| b.name.as_str()), Some("top"));
    assert_eq!(h.backing.unwrap().format, None);

    for name in ["base", "mid", "top", "nofmt"] {
        let want = qemu_raw(dir, name);
        let got = thin_read(&*st, name, 5 * MIB as usize + 4096);
        assert_same(&format!("(a) chain layer {name}"), &got, &want);
    }
    let v = Volume::open(&*st, "nofmt", &OpenOptions::read_only()).unwrap();
    assert_eq!(v.layers(), ["nofmt", "top", "mid", "base"]);
    drop(v);

    // (b) Writes into the top: partial clusters copy up from three layers.
    let ext: Arc<dyn thin::Extender> = Arc::new(StoreExtender(st.clone()));
    let mut expect = qemu_raw(dir, "top");
    thin_writes(&*st, "top", ext.clone(), 2 * MIB, &mut expect, 9);
    {
        let v = Volume::open(&*st, "top", &OpenOptions::default().with_extender(ext)).unwrap();
        // Past the base's end (reads zeroes below), and a grow.
        let buf = vec![0xe1u8; 3000];
        v.write(&buf, 18 * MIB - 1000).unwrap();
        expect[(18 * MIB - 1000) as usize..(18 * MIB + 2000) as usize].fill(0xe1);
        v.grow(24 * MIB).unwrap();
        expect.resize(24 * MIB as usize, 0);
        v.write(&buf, 23 * MIB).unwrap();
        expect[(23 * MIB) as usize..(23 * MIB + 3000) as usize].fill(0xe1);
        v.flush().unwrap();
    }
    check_clean(dir, "top");
    compare(dir, "top", &expect);
    let again = thin_read(&*st, "top", 8 * MIB as usize);
    assert_same("(b) top reread through thin", &again, &expect);
    // The layers below were not touched.
    check_clean(dir, "mid");
    check_clean(dir, "base");
    eprintln!("qemu-made chains: {:?}", t0.elapsed());
}

/// (c) A volume ssv made over a qemu-made chain: `qemu-img info
/// --backing-chain` resolves every relative name (from another working
/// directory too), and QEMU reads what thin wrote. And the other way: a
/// qemu layer over an ssv-made base reads back through thin.
#[test]
fn ssv_image_over_a_qemu_chain() {
    skip_unless_qemu!();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let st = store(dir);
    tool_ok(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "qbase", "16M"],
    );
    qemu_io(dir, "qbase", &qemu_script(SIZE, 65536, 3));
    tool_ok(
        dir,
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", "qbase", "-F", "qcow2", "qmid",
        ],
    );
    qemu_io(dir, "qmid", &["write -P 0x71 5000 70000".into()]);
    let h = thin::create(
        &*st,
        "ssvtop",
        &CreateOptions {
            backing: Some("qmid".into()),
            initial_lv_size: 2 * MIB,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(h.size, SIZE);
    let mut expect = qemu_raw(dir, "qmid");
    {
        let ext: Arc<dyn thin::Extender> = Arc::new(StoreExtender(st.clone()));
        let v = Volume::open(&*st, "ssvtop", &OpenOptions::default().with_extender(ext)).unwrap();
        assert_eq!(v.layers(), ["ssvtop", "qmid", "qbase"]);
        for (i, off) in [7u64, 65530, 3 * MIB + 1, 15 * MIB + 999]
            .into_iter()
            .enumerate()
        {
            let buf = vec![0x90 + i as u8; 4321];
            v.write(&buf, off).unwrap();
            expect[off as usize..off as usize + 4321].copy_from_slice(&buf);
        }
        v.flush().unwrap();
    }
    // From the image's directory and from elsewhere.
    for cwd in [dir, Path::new("/")] {
        let top = dir.join("ssvtop");
        let json = tool_ok(
            cwd,
            "qemu-img",
            &[
                "info",
                "--backing-chain",
                "--output=json",
                top.to_str().unwrap(),
            ],
        );
        let chain = parse_chain(&json);
        let want = [
            (dir.join("ssvtop"), Some("qmid")),
            (dir.join("qmid"), Some("qbase")),
            (dir.join("qbase"), None),
        ];
        assert_eq!(chain.len(), 3, "{json}");
        for ((file, backing, full, fmt), (wfile, wback)) in chain.iter().zip(&want) {
            assert_eq!(Path::new(file), wfile.as_path(), "{json}");
            assert_eq!(fmt, "qcow2", "{json}");
            assert_eq!(backing.as_deref(), *wback, "{json}");
            if let Some(b) = wback {
                assert_eq!(
                    full.as_deref().map(Path::new),
                    Some(dir.join(b).as_path()),
                    "{json}"
                );
            }
        }
    }
    check_clean(dir, "ssvtop");
    compare(dir, "ssvtop", &expect);

    // A qemu layer over an ssv-made base.
    thin::create(
        &*st,
        "sbase",
        &CreateOptions {
            size: Some(SIZE),
            cluster_size: 4096,
            initial_lv_size: MIB,
            ..Default::default()
        },
    )
    .unwrap();
    let mut e2 = vec![0u8; SIZE as usize];
    {
        let ext: Arc<dyn thin::Extender> = Arc::new(StoreExtender(st.clone()));
        let v = Volume::open(&*st, "sbase", &OpenOptions::default().with_extender(ext)).unwrap();
        let buf: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 + 1).collect();
        v.write(&buf, 77_777).unwrap();
        e2[77_777..377_777].copy_from_slice(&buf);
        v.flush().unwrap();
    }
    tool_ok(
        dir,
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", "sbase", "-F", "qcow2", "qtop",
        ],
    );
    qemu_io(dir, "qtop", &["write -P 0x33 100000 5".into()]);
    e2[100_000..100_005].fill(0x33);
    let got = thin_read(&*st, "qtop", SIZE as usize);
    assert_same("qemu layer over an ssv base", &got, &e2);
    compare(dir, "qtop", &e2);
    eprintln!("ssv over qemu chain: {:?}", t0.elapsed());
}

/// (filename, backing-filename, full-backing-filename, format) per image.
type ChainEntry = (String, Option<String>, Option<String>, String);

/// The images of `qemu-img info --backing-chain --output=json`, top first.
fn parse_chain(json: &str) -> Vec<ChainEntry> {
    // A tiny field extractor (thin has no JSON dev-dependency): the top-level
    // objects of the array each hold these fields once outside "children".
    let field = |obj: &str, key: &str| -> Option<String> {
        let pat = format!("\n        \"{key}\": \"");
        let at = obj.find(&pat)? + pat.len();
        let end = obj[at..].find('"')?;
        Some(obj[at..at + end].to_string())
    };
    let mut out = Vec::new();
    for obj in json.split("\n    },\n    {").map(|s| s.to_string()) {
        out.push((
            field(&obj, "filename").unwrap_or_default(),
            field(&obj, "backing-filename"),
            field(&obj, "full-backing-filename"),
            field(&obj, "format").unwrap_or_default(),
        ));
    }
    out
}

/// Image features the engine does not implement (extended L2 entries, zstd
/// compression, a dirty image with lazy refcounts left by a crash) are
/// refused at open, read-only and read-write, and the image is untouched; a
/// version 2 image reads correctly; an internal snapshot is refused as
/// unsupported with a hint.
#[test]
fn unsupported_qemu_features_are_refused_cleanly() {
    skip_unless_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let st = store(dir);
    let ext: Arc<dyn thin::Extender> = Arc::new(StoreExtender(st.clone()));
    for (name, opts) in [
        ("extl2", "extended_l2=on"),
        ("zstd", "compression_type=zstd"),
        ("dirty", "lazy_refcounts=on"),
    ] {
        tool_ok(
            dir,
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", opts, name, "4M"],
        );
        let mut cmds = vec!["write -P 0x42 1000 70000".to_string()];
        if name == "dirty" {
            // Killed with the dirty bit set and refcounts not yet written.
            cmds.push("sigraise 9".into());
            let (ok, _) = tool(
                dir,
                "qemu-io",
                &["-f", "qcow2", "-c", &cmds[0], "-c", &cmds[1], name],
            );
            assert!(!ok, "qemu-io should have been killed");
        } else {
            qemu_io(dir, name, &cmds);
        }
        let before = std::fs::read(dir.join(name)).unwrap();
        for oo in [
            OpenOptions::read_only(),
            OpenOptions::default().with_extender(ext.clone()),
        ] {
            let e = Volume::open(&*st, name, &oo)
                .err()
                .unwrap_or_else(|| panic!("{opts}: thin opened the image"));
            eprintln!("{opts}: refused: {e}");
        }
        assert!(
            std::fs::read(dir.join(name)).unwrap() == before,
            "{opts}: image changed"
        );
    }
    // Version 2 (compat=0.10) is read as QEMU reads it.
    tool_ok(
        dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "v2",
            "4M",
        ],
    );
    qemu_io(
        dir,
        "v2",
        &["write -P 0x42 1000 70000".into(), "write -z 0 512".into()],
    );
    let want = qemu_raw(dir, "v2");
    assert_same("v2 image", &thin_read(&*st, "v2", MIB as usize), &want);
    // An internal snapshot: refused as unsupported, with a hint.
    tool_ok(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "snap", "4M"],
    );
    tool_ok(dir, "qemu-img", &["snapshot", "-c", "s1", "snap"]);
    let e = Volume::open(&*st, "snap", &OpenOptions::read_only())
        .err()
        .expect("internal snapshots are refused");
    assert!(matches!(e.root(), thin::Error::Unsupported(_)), "{e:?}");
}

/// FINDING (fails today). Valid images with a feature thin does not
/// implement are reported as *corrupt*: `Header::decode` lists extended L2,
/// the compression type and the dirty bit as known, so they pass to imago,
/// which refuses them and thin maps that to `Error::Corrupt`. An operator
/// reads "corrupt qcow2 image" for a healthy template.
#[test]
fn unimplemented_features_are_reported_as_unsupported() {
    skip_unless_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let st = store(dir);
    let mut wrong = Vec::new();
    for (name, opts) in [
        ("extl2", "extended_l2=on"),
        ("zstd", "compression_type=zstd"),
    ] {
        tool_ok(
            dir,
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", opts, name, "4M"],
        );
        // Data, so the file length is whole sectors (see below).
        qemu_io(dir, name, &["write -P 0x42 1000 70000".into()]);
        match Volume::open(&*st, name, &OpenOptions::read_only()) {
            Err(e) if matches!(e.root(), thin::Error::Unsupported(_)) => {}
            Err(e) => wrong.push(format!("{opts}: {e}")),
            Ok(_) => wrong.push(format!("{opts}: opened")),
        }
    }
    assert!(wrong.is_empty(), "not reported as unsupported: {wrong:#?}");
}
/// FINDING (fails today). qemu-img leaves qcow2 files whose length is not a
/// multiple of 512: a new image ends 8 bytes into its L1 table's cluster,
/// and `qemu-io write -c` ends the file inside the last compressed cluster.
/// QEMU reads past EOF as zeroes. `san::FileDev` rounds the size down to the
/// sector, so thin refuses the new image ("L1 table … ends past the device")
/// and loses the tail of the compressed cluster ("Failed to decompress").
#[test]
fn qemu_files_of_unaligned_length() {
    skip_unless_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let st = store(dir);
    let mut failures = Vec::new();
    // A new, empty image.
    tool_ok(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "fresh", "16M"],
    );
    // A compressed cluster as the last thing written.
    tool_ok(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "tailz", "16M"],
    );
    qemu_io(
        dir,
        "tailz",
        &[
            "write -P 0x21 0 65536".into(),
            format!("write -c -P 0x22 {} 65536", MIB),
        ],
    );
    for name in ["fresh", "tailz"] {
        let len = std::fs::metadata(dir.join(name)).unwrap().len();
        let want = qemu_raw(dir, name);
        match try_thin_read(&*st, name, SIZE as usize) {
            Ok(got) if got == want => {}
            Ok(_) => failures.push(format!("{name} ({len} bytes): thin reads other bytes")),
            Err(e) => failures.push(format!("{name} ({len} bytes): {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// FINDING (fails today). The default growth cap (virtual size plus the
/// metadata of a fully allocated image) is too small for an image with
/// compressed clusters: copying a compressed cluster allocates a full one
/// while the host cluster holding the compressed data stays allocated until
/// every compressed cluster in it was copied. Rewriting the whole disk of a
/// `qemu-img convert -c` image (every other cluster first) needs the
/// compressed bytes on top of a fully allocated image and fails with ENOSPC
/// at the cap; the slack of a 128 MiB extent hides it only while the
/// compressed data is smaller than that.
#[test]
fn rewriting_a_compressed_image_fits_the_default_cap() {
    skip_unless_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // "Extents" of one cluster, so the LV ends where growth asked it to.
    let st: Arc<dyn LvStore> = Arc::new(DirStore::new(dir, 65536));
    let size = 8 * MIB;
    // Clusters half noise, half zeroes: they compress to about half.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let raw: Vec<u8> = (0..size as usize)
        .map(|i| {
            if i % 65536 < 32768 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            } else {
                0
            }
        })
        .collect();
    std::fs::write(dir.join("src.raw"), &raw).unwrap();
    tool_ok(
        dir,
        "qemu-img",
        &[
            "convert", "-c", "-f", "raw", "-O", "qcow2", "src.raw", "packed",
        ],
    );
    let ext: Arc<dyn thin::Extender> = Arc::new(StoreExtender(st.clone()));
    let v = Volume::open(&*st, "packed", &OpenOptions::default().with_extender(ext)).unwrap();
    // Every other cluster first: no host cluster of compressed data is
    // freed before the second pass.
    let buf: Vec<u8> = (0..65536usize)
        .map(|i| (i * 7 + i / 251) as u8 | 1)
        .collect();
    for pass in 0..2 {
        for off in (pass * 65536..size).step_by(2 * 65536) {
            v.write(&buf, off).unwrap_or_else(|e| {
                panic!(
                    "rewriting the cluster at {off}: {e} (LV {} bytes, allocated end {})",
                    v.lv_size(),
                    v.allocated_end()
                )
            });
        }
    }
    v.flush().unwrap();
    drop(v);
    check_clean(dir, "packed");
}
