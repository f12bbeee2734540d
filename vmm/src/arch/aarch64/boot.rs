//! Putting an arm64 `Image`, its initrd and the device tree in guest RAM
//! (Linux's arm64 booting protocol): the kernel at a 2 MiB-aligned base
//! plus its `text_offset`, the device tree in the last 2 MiB block of RAM,
//! the initrd just below it, both clear of the kernel's `image_size`.

use super::layout::{DRAM_START, FDT_MAX_SIZE, KERNEL_ALIGN};
use super::Error;

/// "ARM\x64" at offset 56 of the Image header.
const IMAGE_MAGIC: u32 = 0x644d_5241;
const IMAGE_HEADER_SIZE: usize = 64;
/// Before `image_size` was filled in (kernels older than 3.17), the text
/// offset was this and the size unknown.
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
const PAGE: u64 = 0x1000;

/// What the Image header says about placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address, BSS included; 0
    /// when the header does not say.
    pub image_size: u64,
}

/// Parses the first 64 bytes of an arm64 `Image`.
pub fn parse_image_header(bytes: &[u8]) -> Result<ImageHeader, Error> {
    if bytes.len() < IMAGE_HEADER_SIZE {
        return Err(Error::Kernel("shorter than the 64-byte header"));
    }
    let u64_at = |off: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[off..off + 8]);
        u64::from_le_bytes(b)
    };
    let magic = u32::from_le_bytes([bytes[56], bytes[57], bytes[58], bytes[59]]);
    if magic != IMAGE_MAGIC {
        return Err(Error::Kernel("no ARM\\x64 magic"));
    }
    let image_size = u64_at(16);
    let text_offset = if image_size == 0 {
        LEGACY_TEXT_OFFSET
    } else {
        u64_at(8)
    };
    Ok(ImageHeader {
        text_offset,
        image_size,
    })
}

/// Guest addresses of everything the boot puts in RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Where the Image is copied; also the entry point.
    pub kernel: u64,
    /// One past the kernel's footprint (`image_size`, or the file size when
    /// the header does not say).
    pub kernel_end: u64,
    pub initrd: Option<u64>,
    pub fdt: u64,
}

/// Lays out a kernel whose header is `header` and whose file is
/// `kernel_file_size` bytes, an initrd of `initrd_size` bytes and a device
/// tree in `mem_size` bytes of RAM at [`DRAM_START`].
pub fn place(
    header: ImageHeader,
    kernel_file_size: u64,
    initrd_size: Option<u64>,
    mem_size: u64,
) -> Result<Placement, Error> {
    let kernel = DRAM_START
        .checked_add(header.text_offset)
        .ok_or(Error::Kernel("text_offset overflows"))?;
    let footprint = header.image_size.max(kernel_file_size);
    let kernel_end = kernel
        .checked_add(footprint)
        .ok_or(Error::Kernel("image_size overflows"))?;
    let ram_end = DRAM_START
        .checked_add(mem_size)
        .ok_or(Error::Layout("RAM size overflows the address space"))?;
    let fdt_size = FDT_MAX_SIZE as u64;
    let fdt = ram_end
        .checked_sub(fdt_size)
        .map(|a| a & !(KERNEL_ALIGN - 1))
        .filter(|a| *a >= kernel_end)
        .ok_or(Error::Layout(
            "RAM too small for the kernel and the device tree",
        ))?;
    let initrd = match initrd_size {
        None => None,
        Some(size) => Some(
            fdt.checked_sub(size)
                .map(|a| a & !(PAGE - 1))
                .filter(|a| *a >= kernel_end.next_multiple_of(PAGE))
                .ok_or(Error::Layout("RAM too small for the initrd"))?,
        ),
    };
    Ok(Placement {
        kernel,
        kernel_end,
        initrd,
        fdt,
    })
}

/// Where things were put; what the vCPU setup needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootSetup {
    /// PC of the boot vCPU.
    pub entry: u64,
    /// X0 of the boot vCPU.
    pub fdt: u64,
    pub initrd: Option<(u64, u64)>,
}

#[cfg(target_arch = "aarch64")]
pub use loader::{load, Machine};

#[cfg(target_arch = "aarch64")]
mod loader {
    use super::*;
    use crate::arch::aarch64::fdt::{self, FdtConfig};
    use crate::arch::aarch64::layout::{vcpu_mpidr, MmioDevice, MAX_VCPUS};
    use crate::memory::GuestMemory;
    use linux_loader::loader::{KernelLoader, PE};
    use std::io::{Read, Seek, SeekFrom};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile};

    /// What the machine looks like to the kernel, beyond its RAM.
    #[derive(Clone, Debug)]
    pub struct Machine<'a> {
        pub vcpus: usize,
        pub virtio_mmio: &'a [MmioDevice],
    }

    fn size_of<F: Seek>(f: &mut F, what: &'static str) -> Result<u64, Error> {
        let size = f.seek(SeekFrom::End(0)).map_err(|e| Error::Io(what, e))?;
        f.seek(SeekFrom::Start(0)).map_err(|e| Error::Io(what, e))?;
        Ok(size)
    }

    /// Loads the Image, the initrd and a device tree describing `machine`.
    pub fn load<K, I>(
        mem: &GuestMemory,
        kernel: &mut K,
        initrd: Option<&mut I>,
        cmdline: &str,
        machine: &Machine<'_>,
    ) -> Result<BootSetup, Error>
    where
        K: Read + ReadVolatile + Seek,
        I: Read + ReadVolatile + Seek,
    {
        if machine.vcpus == 0 || machine.vcpus > MAX_VCPUS {
            return Err(Error::VcpuCount(machine.vcpus));
        }
        let mem_size: u64 = mem.iter().map(|r| r.len()).sum();
        let kernel_size = size_of(kernel, "kernel image")?;
        let mut head = [0u8; 64];
        kernel
            .read_exact(&mut head)
            .map_err(|e| Error::Io("kernel image", e))?;
        let header = parse_image_header(&head)?;
        let mut initrd = initrd;
        let initrd_size = match initrd.as_deref_mut() {
            Some(f) => Some(size_of(f, "initrd")?),
            None => None,
        };
        let at = place(header, kernel_size, initrd_size, mem_size)?;

        let loaded = PE::load(mem, Some(GuestAddress(DRAM_START)), kernel, None)
            .map_err(Error::KernelLoad)?;
        if loaded.kernel_load.0 != at.kernel {
            return Err(Error::Kernel(
                "loaded at another address than its header says",
            ));
        }

        let initrd = match (initrd, at.initrd, initrd_size) {
            (Some(f), Some(addr), Some(size)) => {
                mem.read_exact_volatile_from(GuestAddress(addr), f, size as usize)
                    .map_err(|e| Error::GuestWrite("initrd", e))?;
                Some((addr, size))
            }
            _ => None,
        };

        let mpidrs: Vec<u64> = (0..machine.vcpus).map(vcpu_mpidr).collect();
        let blob = fdt::create(&FdtConfig {
            vcpu_mpidrs: &mpidrs,
            mem_size,
            cmdline,
            initrd,
            virtio_mmio: machine.virtio_mmio,
        })?;
        mem.write_slice(&blob, GuestAddress(at.fdt))
            .map_err(|e| Error::GuestWrite("device tree", e))?;

        Ok(BootSetup {
            entry: at.kernel,
            fdt: at.fdt,
            initrd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[56..60].copy_from_slice(b"ARM\x64");
        h
    }

    #[test]
    fn header_fields_and_legacy_default() {
        let h = parse_image_header(&header(0, 0x2a0_0000)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0,
                image_size: 0x2a0_0000
            }
        );
        // image_size 0: a pre-3.17 kernel at the fixed 512 KiB offset.
        let h = parse_image_header(&header(0x1234, 0)).unwrap();
        assert_eq!(h.text_offset, 0x8_0000);
        let mut bad = header(0, 1);
        bad[56] = b'X';
        assert!(matches!(parse_image_header(&bad), Err(Error::Kernel(_))));
        assert!(matches!(
            parse_image_header(&[0; 10]),
            Err(Error::Kernel(_))
        ));
    }

    #[test]
    fn fdt_in_last_2m_block_initrd_below_kernel_clear() {
        let mem = 256u64 << 20;
        let h = ImageHeader {
            text_offset: 0,
            image_size: 0x300_0000,
        };
        let p = place(h, 0x200_0000, Some(0x12_3456), mem).unwrap();
        assert_eq!(p.kernel, DRAM_START);
        assert_eq!(p.kernel % KERNEL_ALIGN, 0);
        assert_eq!(p.kernel_end, DRAM_START + 0x300_0000);
        assert_eq!(p.fdt, DRAM_START + mem - (2 << 20));
        let initrd = p.initrd.unwrap();
        assert_eq!(initrd % PAGE, 0);
        assert!(initrd + 0x12_3456 <= p.fdt);
        assert!(p.fdt - (initrd + 0x12_3456) < PAGE);
        assert!(initrd >= p.kernel_end);
    }

    proptest::proptest! {
        /// Whatever a header claims, placement either refuses or yields
        /// regions that lie in RAM, in order, without overlap.
        #[test]
        fn placement_is_sound_for_any_header(
            text_offset in proptest::prelude::any::<u64>(),
            image_size in proptest::prelude::any::<u64>(),
            file in 0u64..(1 << 40),
            initrd in proptest::option::of(0u64..(1 << 40)),
            mem in 0u64..(1 << 40),
        ) {
            let mut bytes = header(text_offset, image_size);
            bytes[0] = 0x4d;
            if let Ok(h) = parse_image_header(&bytes) {
                if let Ok(p) = place(h, file, initrd, mem) {
                    proptest::prop_assert!(p.kernel >= DRAM_START && p.kernel < p.kernel_end);
                    proptest::prop_assert!(p.kernel_end - p.kernel >= file);
                    if let (Some(addr), Some(size)) = (p.initrd, initrd) {
                        proptest::prop_assert!(addr >= p.kernel_end && addr + size <= p.fdt);
                    }
                    proptest::prop_assert!(p.fdt >= p.kernel_end);
                    proptest::prop_assert!(p.fdt + FDT_MAX_SIZE as u64 <= DRAM_START + mem);
                }
            }
        }
    }

    /// The whole load through linux-loader's Image loader (aarch64 builds
    /// only; runs under qemu-aarch64 user emulation on other hosts).
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn load_puts_image_initrd_and_tree_where_the_setup_says() {
        use crate::arch::aarch64::layout::{ram_ranges, virtio_mmio_device};
        use std::io::Cursor;
        use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

        let mem_size = 128u64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&ram_ranges(mem_size)).unwrap();
        let mut image = header(0, 0x100_0000);
        image.extend((0..100_000u32).map(|i| (i % 253) as u8));
        let initrd_bytes = vec![0x42u8; 300_000];
        let devices = [virtio_mmio_device(0).unwrap()];
        let boot = load(
            &mem,
            &mut Cursor::new(image.clone()),
            Some(&mut Cursor::new(initrd_bytes.clone())),
            "console=ttyS0",
            &Machine {
                vcpus: 2,
                virtio_mmio: &devices,
            },
        )
        .unwrap();
        assert_eq!(boot.entry, DRAM_START);
        let mut got = vec![0u8; image.len()];
        mem.read_slice(&mut got, GuestAddress(DRAM_START)).unwrap();
        assert_eq!(got, image);
        let (addr, size) = boot.initrd.unwrap();
        let mut got = vec![0u8; size as usize];
        mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
        assert_eq!(got, initrd_bytes);
        let mut blob = vec![0u8; FDT_MAX_SIZE];
        mem.read_slice(&mut blob, GuestAddress(boot.fdt)).unwrap();
        let tree = fdt::Fdt::new(&blob).unwrap();
        assert_eq!(tree.chosen().bootargs(), Some("console=ttyS0"));
        assert_eq!(tree.cpus().count(), 2);
        let start = tree
            .find_node("/chosen")
            .unwrap()
            .property("linux,initrd-start")
            .unwrap();
        assert_eq!(start.value, addr.to_be_bytes());
    }

    #[test]
    fn too_little_ram_is_refused() {
        let h = ImageHeader {
            text_offset: 0,
            image_size: 0x300_0000,
        };
        assert!(matches!(
            place(h, 0, None, 0x300_0000),
            Err(Error::Layout(_))
        ));
        assert!(matches!(
            place(h, 0, Some(64 << 20), 64 << 20),
            Err(Error::Layout(_))
        ));
        // A file larger than the header's image_size still counts whole.
        let p = place(h, 0x400_0000, None, 128 << 20).unwrap();
        assert_eq!(p.kernel_end, DRAM_START + 0x400_0000);
    }
}
