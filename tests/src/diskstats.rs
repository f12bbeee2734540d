//! The kernel's I/O counters (`/proc/diskstats`) of the disk under a path:
//! how long requests waited at the disk while a benchmark ran.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One line of `/proc/diskstats`, the fields a benchmark reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub reads: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub write_ms: u64,
    pub sectors_written: u64,
}

impl DiskCounters {
    /// The counts between `earlier` and `self`.
    pub fn since(&self, earlier: &DiskCounters) -> DiskCounters {
        DiskCounters {
            reads: self.reads.saturating_sub(earlier.reads),
            read_ms: self.read_ms.saturating_sub(earlier.read_ms),
            writes: self.writes.saturating_sub(earlier.writes),
            write_ms: self.write_ms.saturating_sub(earlier.write_ms),
            sectors_written: self.sectors_written.saturating_sub(earlier.sectors_written),
        }
    }

    pub fn add(&mut self, o: &DiskCounters) {
        self.reads += o.reads;
        self.read_ms += o.read_ms;
        self.writes += o.writes;
        self.write_ms += o.write_ms;
        self.sectors_written += o.sectors_written;
    }

    /// "reads N, X ms each; writes M, Y ms each, Z KiB on average".
    pub fn describe(&self) -> String {
        let each = |ms: u64, n: u64| ms as f64 / n.max(1) as f64;
        format!(
            "reads {}, {:.1} ms each; writes {}, {:.1} ms each, {:.0} KiB on average",
            self.reads,
            each(self.read_ms, self.reads),
            self.writes,
            each(self.write_ms, self.writes),
            self.sectors_written as f64 * 512.0 / 1024.0 / self.writes.max(1) as f64
        )
    }
}

/// The disk (or partition) holding `path`: its name in `/proc/diskstats`.
pub fn disk_of(path: &Path) -> Option<String> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let want = (u64::from(libc::major(dev)), u64::from(libc::minor(dev)));
    lines()?
        .into_iter()
        .find(|l| (l.major, l.minor) == want)
        .map(|l| l.name)
}

/// The counters of `disk` now.
pub fn counters(disk: &str) -> Option<DiskCounters> {
    lines()?
        .into_iter()
        .find(|l| l.name == disk)
        .map(|l| l.counters)
}

/// One disk's line of `/proc/diskstats`.
struct Line {
    major: u64,
    minor: u64,
    name: String,
    counters: DiskCounters,
}

/// The lines of `/proc/diskstats`.
fn lines() -> Option<Vec<Line>> {
    let text = std::fs::read_to_string("/proc/diskstats").ok()?;
    Some(text.lines().filter_map(parse_line).collect())
}

/// A `/proc/diskstats` line: major, minor, name, then reads completed,
/// merged, sectors read, ms reading, writes completed, merged, sectors
/// written, ms writing, ...
fn parse_line(line: &str) -> Option<Line> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(Line {
        major: n(0)?,
        minor: n(1)?,
        name: f.get(2)?.to_string(),
        counters: DiskCounters {
            reads: n(3)?,
            read_ms: n(6)?,
            writes: n(7)?,
            write_ms: n(10)?,
            sectors_written: n(9)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_and_a_difference() {
        let l = parse_line(
            " 253       0 vda 3185 12 90000 8281 52475 100 50331648 330592 0 0 0 0 0 0 0 0 0",
        )
        .unwrap();
        assert_eq!((l.major, l.minor, l.name.as_str()), (253, 0, "vda"));
        let c = l.counters;
        assert_eq!(
            c,
            DiskCounters {
                reads: 3185,
                read_ms: 8281,
                writes: 52475,
                write_ms: 330592,
                sectors_written: 50331648
            }
        );
        let d = c.since(&DiskCounters {
            reads: 185,
            read_ms: 281,
            writes: 475,
            write_ms: 592,
            sectors_written: 648,
        });
        assert_eq!(
            d.describe(),
            "reads 3000, 2.7 ms each; writes 52000, 6.3 ms each, 484 KiB on average"
        );
        assert!(parse_line("253 0 vda 1 2").is_none());
    }

    #[test]
    fn the_disk_under_a_path_is_found() {
        // Skipped where /proc/diskstats does not list the root's device
        // (an overlay or tmpfs root, as in some containers).
        if let Some(disk) = disk_of(Path::new("/")) {
            assert!(counters(&disk).is_some(), "{disk}");
        }
    }
}
