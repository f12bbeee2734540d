//! What a VM is made of: memory, vCPUs, what it boots, its disks and where
//! its console goes. The command line of `ssv-vmm` fills it in.

use std::path::PathBuf;
use std::str::FromStr;

pub const MIB: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub memory_mib: u64,
    pub vcpus: u8,
    pub boot: Boot,
    pub disks: Vec<DiskSpec>,
    pub serial: SerialOutput,
    /// Guest-physical address of the first virtio-mmio window; the others
    /// follow every 4 KiB.
    pub virtio_mmio_base: u64,
    pub transport: Transport,
}

/// How the guest reaches its virtio devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// virtio-mmio: one interrupt per device; what a real-mode guest and
    /// aarch64 guests use.
    Mmio,
    /// virtio-pci with an MSI-X vector per queue (x86_64 Linux guests).
    Pci,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// A flat 16-bit image started at 0:0x7c00 (the test guest).
    RealMode { image: PathBuf },
    /// A Linux kernel by its boot protocol.
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOutput {
    Stdout,
    File(PathBuf),
}

impl FromStr for SerialOutput {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("an empty serial output".into()),
            "stdout" | "-" => Ok(SerialOutput::Stdout),
            path => Ok(SerialOutput::File(path.into())),
        }
    }
}

/// Where a disk's layers live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskStore {
    /// Files in a directory (`thin::DirStore`).
    Dir(PathBuf),
    /// LVs of a VG on these PVs (`thin::VgStore`).
    Vg { vg: String, pvs: Vec<PathBuf> },
}

/// One virtio-blk disk: `dir=DIR,top=NAME[,readonly]` or
/// `vg=VG,lv=TOP,pv=PATH[,pv=PATH...][,readonly]`, and on either
/// `threshold=PERCENT` and `chunk=BYTES` (K, M, G suffixes) to override the
/// growth policy, and `queues=N` for the number of virtio queues (default:
/// one per vCPU, so each vCPU submits on its own queue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub store: DiskStore,
    pub top: String,
    pub readonly: bool,
    pub threshold_percent: Option<u8>,
    pub chunk: Option<u64>,
    pub queues: Option<u16>,
}

fn parse_size(v: &str) -> Result<u64, String> {
    let (num, mult) = match v.as_bytes().last() {
        Some(b'K' | b'k') => (&v[..v.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&v[..v.len() - 1], MIB),
        Some(b'G' | b'g') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad size {v:?}"))
}

impl FromStr for DiskSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut dir, mut vg, mut top, mut pvs) = (None, None, None, Vec::new());
        let (mut readonly, mut threshold_percent, mut chunk) = (false, None, None);
        let mut queues = None;
        for item in s.split(',') {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            let once = |slot: &mut Option<String>| -> Result<(), String> {
                if v.is_empty() || slot.replace(v.to_string()).is_some() {
                    return Err(format!("{k}= given empty or twice in {s:?}"));
                }
                Ok(())
            };
            match k {
                "dir" => once(&mut dir)?,
                "vg" => once(&mut vg)?,
                "top" | "lv" => once(&mut top)?,
                "pv" if !v.is_empty() => pvs.push(PathBuf::from(v)),
                "readonly" | "ro" if v.is_empty() => readonly = true,
                "threshold" => {
                    let p: u8 = v.parse().map_err(|_| format!("bad threshold {v:?}"))?;
                    if !(1..=100).contains(&p) {
                        return Err(format!("threshold {p} is not 1..=100"));
                    }
                    threshold_percent = Some(p);
                }
                "chunk" => chunk = Some(parse_size(v)?),
                "queues" => {
                    let n: u16 = v.parse().map_err(|_| format!("bad queue count {v:?}"))?;
                    if n == 0 {
                        return Err("queues=0: a disk needs at least one queue".into());
                    }
                    queues = Some(n);
                }
                _ => return Err(format!("unknown disk option {item:?} in {s:?}")),
            }
        }
        let top = top.ok_or_else(|| format!("no top=/lv= in disk {s:?}"))?;
        let store = match (dir, vg) {
            (Some(d), None) if pvs.is_empty() => DiskStore::Dir(d.into()),
            (None, Some(vg)) if !pvs.is_empty() => DiskStore::Vg { vg, pvs },
            (None, Some(_)) => return Err(format!("vg= needs at least one pv= in {s:?}")),
            _ => return Err(format!("a disk is dir=… or vg=…,pv=…, not both: {s:?}")),
        };
        Ok(DiskSpec {
            store,
            top,
            readonly,
            threshold_percent,
            chunk,
            queues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_parse() {
        assert_eq!(
            "dir=/d,top=a,readonly".parse::<DiskSpec>().unwrap(),
            DiskSpec {
                store: DiskStore::Dir("/d".into()),
                top: "a".into(),
                readonly: true,
                threshold_percent: None,
                chunk: None,
                queues: None,
            }
        );
        let d: DiskSpec = "vg=pool,lv=v1,pv=/a,pv=/b,threshold=25,chunk=4M,queues=4"
            .parse()
            .unwrap();
        assert_eq!(
            d.store,
            DiskStore::Vg {
                vg: "pool".into(),
                pvs: vec!["/a".into(), "/b".into()]
            }
        );
        assert_eq!((d.top.as_str(), d.readonly), ("v1", false));
        assert_eq!((d.threshold_percent, d.chunk), (Some(25), Some(4 * MIB)));
        assert_eq!(d.queues, Some(4));
    }

    #[test]
    fn bad_disk_specs_say_why() {
        for bad in [
            "",
            "dir=/d",
            "top=a",
            "dir=/d,vg=v,top=a,pv=/p",
            "vg=v,lv=a",
            "dir=/d,top=a,pv=/p",
            "dir=/d,top=a,top=b",
            "dir=/d,top=a,threshold=0",
            "dir=/d,top=a,threshold=101",
            "dir=/d,top=a,chunk=0",
            "dir=/d,top=a,chunk=99999999999G",
            "dir=/d,top=a,readonly=no",
            "dir=/d,top=a,queues=0",
            "dir=/d,top=a,queues=many",
            "dir=/d,top=a,colour=blue",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn serial_outputs_parse() {
        assert_eq!("stdout".parse(), Ok(SerialOutput::Stdout));
        assert_eq!("/tmp/c".parse(), Ok(SerialOutput::File("/tmp/c".into())));
        assert!("".parse::<SerialOutput>().is_err());
    }
}
