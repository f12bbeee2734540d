//! Loading Linux for the 64-bit boot protocol: the kernel (bzImage or ELF
//! vmlinux), the initrd, the command line and `struct boot_params` (the
//! zero page), plus the tables the kernel reads at entry.

use super::layout::{
    MmioDevice, CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIGH_RAM_START, MMIO_HOLE_START, ZERO_PAGE_ADDR,
};
use super::{acpi, e820, gdt, paging, Error};
use crate::memory::GuestMemory;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_params, setup_header, XLF_KERNEL_64};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult};
use std::io::{Read, Seek, SeekFrom};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile};

/// "HdrS": the setup header's magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature the kernel checks in `boot_flag`.
const BOOT_FLAG: u16 = 0xaa55;
/// "Undefined" boot loader id: we have none assigned.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Offset of the 64-bit entry point from a bzImage's protected-mode code.
const BZIMAGE_ENTRY_64: u64 = 0x200;
/// Protocol 2.12 brought `xloadflags` and with it the 64-bit entry.
const PROTOCOL_64BIT_ENTRY: u16 = 0x020c;
/// Protocol 2.06 brought `cmdline_size`.
const PROTOCOL_CMDLINE_SIZE: u16 = 0x0206;
/// Protocol 2.03 brought `initrd_addr_max`; before, this was the limit.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const PAGE: u64 = 0x1000;

/// What the machine looks like to the kernel, beyond its RAM.
#[derive(Clone, Debug)]
pub struct Machine<'a> {
    pub vcpus: usize,
    /// The virtio-mmio devices, from [`super::layout::virtio_mmio_device`].
    pub virtio_mmio: &'a [MmioDevice],
    /// Whether there is a PCI bus (the DSDT then declares its root).
    pub pci: bool,
}

/// Where things were put; what the vCPU setup needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootSetup {
    /// The kernel's 64-bit entry point (`rip`).
    pub entry: GuestAddress,
    /// `struct boot_params` (`rsi`).
    pub zero_page: GuestAddress,
    /// First byte the kernel may use and one past the last, `init_size`
    /// included.
    pub kernel_start: GuestAddress,
    pub kernel_end: GuestAddress,
    /// The initrd's address and size.
    pub initrd: Option<(GuestAddress, u64)>,
    pub acpi_rsdp: GuestAddress,
}

/// Total RAM and where RAM below the hole ends.
fn ram(mem: &GuestMemory) -> (u64, u64) {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    (total, total.min(MMIO_HOLE_START))
}

fn is_elf<F: Read + Seek>(image: &mut F) -> Result<bool, Error> {
    let mut magic = [0u8; 4];
    image
        .seek(SeekFrom::Start(0))
        .and_then(|_| image.read_exact(&mut magic))
        .map_err(|e| Error::Io("kernel image", e))?;
    image
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::Io("kernel image", e))?;
    Ok(magic == *b"\x7fELF")
}

/// A setup header for a kernel that came without one (ELF vmlinux).
fn synthetic_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS_MAGIC,
        ..Default::default()
    }
}

/// Loads the kernel and everything it reads at entry into `mem`.
pub fn load<K, I>(
    mem: &GuestMemory,
    kernel: &mut K,
    initrd: Option<&mut I>,
    cmdline: &Cmdline,
    machine: &Machine<'_>,
) -> Result<BootSetup, Error>
where
    K: Read + ReadVolatile + Seek,
    I: Read + ReadVolatile + Seek,
{
    let (ram_total, low_ram_end) = ram(mem);
    if low_ram_end <= HIGH_RAM_START {
        return Err(Error::Layout("no RAM above 1 MiB"));
    }

    // The kernel.
    let elf = is_elf(kernel)?;
    let loaded: KernelLoaderResult = if elf {
        Elf::load(mem, None, kernel, Some(GuestAddress(HIGH_RAM_START)))
    } else {
        BzImage::load(mem, None, kernel, Some(GuestAddress(HIGH_RAM_START)))
    }
    .map_err(Error::KernelLoad)?;
    let (mut hdr, entry, kernel_end) = match loaded.setup_header {
        Some(hdr) => {
            let version = hdr.version;
            let xloadflags = hdr.xloadflags;
            if version < PROTOCOL_64BIT_ENTRY || xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::Kernel("the bzImage has no 64-bit entry point"));
            }
            // The kernel needs init_size bytes from its load address to
            // decompress and run in.
            let init_end = loaded.kernel_load.0 + u64::from(hdr.init_size);
            (
                hdr,
                loaded.kernel_load.0 + BZIMAGE_ENTRY_64,
                init_end.max(loaded.kernel_end),
            )
        }
        None => (synthetic_header(), loaded.kernel_load.0, loaded.kernel_end),
    };
    if kernel_end > low_ram_end {
        return Err(Error::Layout(
            "the kernel does not fit in RAM below the MMIO hole",
        ));
    }
    let kernel_start = if elf {
        HIGH_RAM_START
    } else {
        loaded.kernel_load.0
    };

    gdt::write(mem)?;
    paging::write(mem)?;

    // The command line.
    let text = cmdline.as_cstring().map_err(Error::Cmdline)?;
    let len = text.as_bytes_with_nul().len();
    let version = hdr.version;
    let max = if version >= PROTOCOL_CMDLINE_SIZE {
        (hdr.cmdline_size as usize)
            .saturating_add(1)
            .min(CMDLINE_MAX_SIZE)
    } else {
        CMDLINE_MAX_SIZE
    };
    if len > max {
        return Err(Error::CmdlineTooLong { len, max });
    }
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline).map_err(Error::KernelLoad)?;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = (len - 1) as u32;

    // The initrd, as high as the kernel allows, so that the kernel's
    // decompression and early allocations below it never touch it.
    let initrd = match initrd {
        None => None,
        Some(file) => {
            let size = file
                .seek(SeekFrom::End(0))
                .and_then(|s| file.seek(SeekFrom::Start(0)).map(|_| s))
                .map_err(|e| Error::Io("initrd", e))?;
            let addr_max = if hdr.initrd_addr_max != 0 {
                u64::from(hdr.initrd_addr_max)
            } else {
                DEFAULT_INITRD_ADDR_MAX
            };
            let limit = low_ram_end.min(addr_max + 1);
            let addr = limit
                .checked_sub(size)
                .map(|a| a & !(PAGE - 1))
                .filter(|a| *a >= kernel_end.next_multiple_of(PAGE))
                .ok_or(Error::InitrdDoesNotFit {
                    size,
                    kernel_end,
                    limit,
                })?;
            mem.read_exact_volatile_from(GuestAddress(addr), file, size as usize)
                .map_err(|e| Error::GuestWrite("initrd", e))?;
            hdr.ramdisk_image = addr as u32;
            hdr.ramdisk_size = size as u32;
            Some((GuestAddress(addr), size))
        }
    };

    let tables = acpi::write(mem, machine.vcpus, machine.virtio_mmio, machine.pci)?;

    // The zero page.
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: tables.rsdp.0,
        ..Default::default()
    };
    let map = e820::entries(ram_total);
    if map.len() > params.e820_table.len() {
        return Err(Error::Layout("too many e820 entries"));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|e| Error::GuestWrite("zero page", e))?;

    Ok(BootSetup {
        entry: GuestAddress(entry),
        zero_page: GuestAddress(ZERO_PAGE_ADDR),
        kernel_start: GuestAddress(kernel_start),
        kernel_end: GuestAddress(kernel_end),
        initrd,
        acpi_rsdp: tables.rsdp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::e820::{E820_RAM, E820_RESERVED};
    use crate::arch::x86_64::layout::{ram_ranges, virtio_mmio_device, ACPI_START};
    use linux_loader::loader::bootparam::LOADED_HIGH;
    use std::io::Cursor;
    use vm_memory::GuestMemoryMmap;

    const MEM: u64 = 128 << 20;

    fn memory(size: u64) -> GuestMemory {
        GuestMemoryMmap::from_ranges(&ram_ranges(size)).unwrap()
    }

    fn devices() -> Vec<MmioDevice> {
        (0..2).map(|i| virtio_mmio_device(i).unwrap()).collect()
    }

    /// A bzImage as the boot protocol describes it: `setup_sects` sectors of
    /// setup after the boot sector, then the protected-mode payload.
    fn bzimage(version: u16, xloadflags: u16, payload: &[u8]) -> Vec<u8> {
        let setup_sects = 4u8;
        let mut img = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        let hdr = setup_header {
            setup_sects,
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version,
            loadflags: LOADED_HIGH,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags,
            cmdline_size: 2047,
            init_size: 0x80_0000,
            ..Default::default()
        };
        let bytes = vm_memory::ByteValued::as_slice(&hdr);
        img[0x1f1..0x1f1 + bytes.len()].copy_from_slice(bytes);
        img.extend_from_slice(payload);
        img
    }

    fn zero_page(mem: &GuestMemory) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap()
    }

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn bzimage_boot_fills_the_zero_page() {
        let mem = memory(MEM);
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut kernel = Cursor::new(bzimage(0x020f, XLF_KERNEL_64, &payload));
        let initrd_bytes: Vec<u8> = (0..12_345u32).map(|i| (i % 251) as u8).collect();
        let mut initrd = Cursor::new(initrd_bytes.clone());
        let cmdline = Cmdline::try_from("console=ttyS0 panic=1", 2048).unwrap();
        let machine = Machine {
            vcpus: 2,
            virtio_mmio: &devices(),
            pci: false,
        };
        let boot = load(&mem, &mut kernel, Some(&mut initrd), &cmdline, &machine).unwrap();

        // The payload is at code32_start, the 64-bit entry 0x200 into it.
        assert_eq!(boot.entry, GuestAddress(0x10_0200));
        assert_eq!(read(&mem, 0x10_0000, payload.len()), payload);
        assert_eq!(boot.kernel_end, GuestAddress(0x10_0000 + 0x80_0000));

        let zp = zero_page(&mem);
        let hdr = zp.hdr;
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!(hdr.type_of_loader, LOADER_TYPE_UNDEFINED);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.cmdline_size }, 21);
        assert_eq!(read(&mem, CMDLINE_ADDR, 22), b"console=ttyS0 panic=1\0");
        assert_eq!({ zp.acpi_rsdp_addr }, ACPI_START);

        // The initrd sits page-aligned at the top of RAM, above the kernel.
        let (addr, size) = boot.initrd.unwrap();
        assert_eq!(size, initrd_bytes.len() as u64);
        assert_eq!(addr.0 % PAGE, 0);
        assert!(addr.0 + size <= MEM && MEM - (addr.0 + size) < PAGE);
        assert!(addr.0 >= boot.kernel_end.0);
        assert_eq!({ hdr.ramdisk_image }, addr.0 as u32);
        assert_eq!({ hdr.ramdisk_size }, size as u32);
        assert_eq!(read(&mem, addr.0, initrd_bytes.len()), initrd_bytes);

        // e820 as the kernel will read it.
        let n = usize::from(zp.e820_entries);
        let got: Vec<(u64, u64, u32)> = zp.e820_table[..n]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect();
        assert_eq!(
            got,
            e820::entries(MEM)
                .iter()
                .map(|e| (e.addr, e.size, e.r#type))
                .collect::<Vec<_>>()
        );
        assert!(got.contains(&(0x10_0000, MEM - 0x10_0000, E820_RAM)));
        assert!(got.contains(&(MMIO_HOLE_START, 0x4000_0000, E820_RESERVED)));

        // Page tables and GDT are in place.
        let pml4e: u64 = mem
            .read_obj(GuestAddress(super::super::layout::PML4_ADDR))
            .unwrap();
        assert_eq!(pml4e & !0xfff, super::super::layout::PDPT_ADDR);
        let cs: u64 = mem
            .read_obj(GuestAddress(super::super::layout::GDT_ADDR + 0x10))
            .unwrap();
        assert_eq!(cs, gdt::TABLE[2]);
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        // 3 GiB of RAM below the hole but a kernel that takes initrds below
        // 2 GiB only.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8100_0000)]).unwrap();
        let mut kernel = Cursor::new(bzimage(0x020f, XLF_KERNEL_64, &[0x90; 4096]));
        let mut initrd = Cursor::new(vec![1u8; 10_000]);
        let cmdline = Cmdline::try_from("quiet", 64).unwrap();
        let machine = Machine {
            vcpus: 1,
            virtio_mmio: &[],
            pci: false,
        };
        let boot = load(&mem, &mut kernel, Some(&mut initrd), &cmdline, &machine).unwrap();
        let (addr, size) = boot.initrd.unwrap();
        assert!(addr.0 + size <= 0x8000_0000);
        assert!(0x8000_0000 - (addr.0 + size) < PAGE);
    }

    #[test]
    fn refusals_say_why() {
        let mem = memory(MEM);
        let machine = Machine {
            vcpus: 1,
            virtio_mmio: &[],
            pci: false,
        };
        let short = Cmdline::try_from("x", 16).unwrap();

        // A 32-bit-only kernel.
        let mut k = Cursor::new(bzimage(0x020b, 0, &[0; 512]));
        let err = load(&mem, &mut k, None::<&mut Cursor<Vec<u8>>>, &short, &machine).unwrap_err();
        assert!(matches!(err, Error::Kernel(_)), "{err}");

        // Not a kernel at all.
        let mut k = Cursor::new(vec![0u8; 4096]);
        let err = load(&mem, &mut k, None::<&mut Cursor<Vec<u8>>>, &short, &machine).unwrap_err();
        assert!(matches!(err, Error::KernelLoad(_)), "{err}");

        // A command line longer than the kernel's cmdline_size.
        let long = Cmdline::try_from(&"a".repeat(3000), 4096).unwrap();
        let mut k = Cursor::new(bzimage(0x020f, XLF_KERNEL_64, &[0; 512]));
        let err = load(&mem, &mut k, None::<&mut Cursor<Vec<u8>>>, &long, &machine).unwrap_err();
        assert!(
            matches!(
                err,
                Error::CmdlineTooLong {
                    len: 3001,
                    max: 2048
                }
            ),
            "{err}"
        );

        // An initrd larger than the RAM above the kernel.
        let mut k = Cursor::new(bzimage(0x020f, XLF_KERNEL_64, &[0; 512]));
        let mut initrd = Cursor::new(vec![0u8; (MEM - 0x80_0000) as usize]);
        let err = load(&mem, &mut k, Some(&mut initrd), &short, &machine).unwrap_err();
        assert!(matches!(err, Error::InitrdDoesNotFit { .. }), "{err}");

        // A kernel whose init_size runs past the end of RAM.
        let small = memory(8 << 20);
        let mut k = Cursor::new(bzimage(0x020f, XLF_KERNEL_64, &[0; 512]));
        let err = load(
            &small,
            &mut k,
            None::<&mut Cursor<Vec<u8>>>,
            &short,
            &machine,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Layout(_)), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        /// Whatever a bzImage's header claims, loading refuses or leaves the
        /// kernel, its init_size and the initrd inside RAM below the hole.
        #[test]
        fn any_setup_header_loads_soundly_or_is_refused(
            version in proptest::prelude::any::<u16>(),
            xloadflags in proptest::prelude::any::<u16>(),
            init_size in 0u32..(40 << 20),
            initrd_addr_max in proptest::prop_oneof![proptest::prelude::Just(0u32), 0u32..(40 << 20), proptest::prelude::any::<u32>()],
            cmdline_size in proptest::prelude::any::<u32>(),
            setup_sects in proptest::prelude::any::<u8>(),
            initrd_len in 0usize..(1 << 20),
        ) {
            let mem = memory(32 << 20);
            let mut img = bzimage(version, xloadflags, &[0x90; 4096]);
            img[0x1f1] = setup_sects;
            let off = 0x1f1 + std::mem::offset_of!(setup_header, init_size);
            img[off..off + 4].copy_from_slice(&init_size.to_le_bytes());
            let off = 0x1f1 + std::mem::offset_of!(setup_header, initrd_addr_max);
            img[off..off + 4].copy_from_slice(&initrd_addr_max.to_le_bytes());
            let off = 0x1f1 + std::mem::offset_of!(setup_header, cmdline_size);
            img[off..off + 4].copy_from_slice(&cmdline_size.to_le_bytes());
            let mut initrd = Cursor::new(vec![7u8; initrd_len]);
            let cmdline = Cmdline::try_from("console=ttyS0", 64).unwrap();
            let machine = Machine { vcpus: 1, virtio_mmio: &[], pci: false };
            if let Ok(boot) = load(&mem, &mut Cursor::new(img), Some(&mut initrd), &cmdline, &machine) {
                proptest::prop_assert!(boot.kernel_end.0 <= 32 << 20);
                let (addr, size) = boot.initrd.unwrap();
                proptest::prop_assert!(addr.0 >= boot.kernel_end.0);
                proptest::prop_assert!(addr.0 + size <= 32 << 20);
                proptest::prop_assert!(addr.0 + size <= u64::from(initrd_addr_max) + 1 || initrd_addr_max == 0);
            }
        }
    }

    /// A minimal ELF64 executable: one PT_LOAD segment at `paddr`.
    fn elf(paddr: u64, entry: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"\x7fELF");
        v.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, v1
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        v.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&entry.to_le_bytes());
        v.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        v.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        v.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        v.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        v.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        v.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
        v.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
        let offset = 64 + 56u64;
        v.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        v.extend_from_slice(&7u32.to_le_bytes()); // RWX
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&(0xffff_ffff_8000_0000 + paddr).to_le_bytes()); // vaddr
        v.extend_from_slice(&paddr.to_le_bytes());
        v.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        v.extend_from_slice(&(payload.len() as u64 * 2).to_le_bytes()); // memsz
        v.extend_from_slice(&0x20_0000u64.to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn elf_vmlinux_boots_at_its_entry_with_a_synthetic_header() {
        let mem = memory(MEM);
        let payload = vec![0xccu8; 8192];
        let mut kernel = Cursor::new(elf(0x100_0000, 0x100_0000, &payload));
        let cmdline = Cmdline::try_from("root=/dev/vda", 64).unwrap();
        let machine = Machine {
            vcpus: 1,
            virtio_mmio: &[],
            pci: false,
        };
        let boot = load(
            &mem,
            &mut kernel,
            None::<&mut Cursor<Vec<u8>>>,
            &cmdline,
            &machine,
        )
        .unwrap();
        assert_eq!(boot.entry, GuestAddress(0x100_0000));
        assert_eq!(boot.kernel_end, GuestAddress(0x100_0000 + 2 * 8192));
        assert_eq!(read(&mem, 0x100_0000, 8192), payload);
        let hdr = zero_page(&mem).hdr;
        assert_eq!(({ hdr.header }, { hdr.boot_flag }), (HDRS_MAGIC, BOOT_FLAG));
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!(read(&mem, CMDLINE_ADDR, 14), b"root=/dev/vda\0");
    }

    /// Debian's cloud kernel, when the test is pointed at one:
    /// `SSV_VMM_TEST_BZIMAGE=/path/to/vmlinuz` (from `apt-get download
    /// linux-image-6.1.0-*-cloud-amd64` and `dpkg-deb -x`).
    #[test]
    fn real_bzimage_setup_header_reaches_the_zero_page() {
        let Some(path) = std::env::var_os("SSV_VMM_TEST_BZIMAGE") else {
            eprintln!("SKIP: set SSV_VMM_TEST_BZIMAGE to a bzImage (e.g. Debian's vmlinuz-*-cloud-amd64) to run this test");
            return;
        };
        let image = std::fs::read(&path).unwrap();
        let mem = memory(512 << 20);
        let mut kernel = Cursor::new(image.clone());
        let mut initrd = Cursor::new(vec![0x5au8; 1 << 20]);
        let cmdline = Cmdline::try_from("console=ttyS0 reboot=k panic=1", 4096).unwrap();
        let machine = Machine {
            vcpus: 4,
            virtio_mmio: &devices(),
            pci: false,
        };
        let boot = load(&mem, &mut kernel, Some(&mut initrd), &cmdline, &machine).unwrap();
        let hdr = zero_page(&mem).hdr;
        let file_hdr: setup_header = {
            let mut h = setup_header::default();
            let n = std::mem::size_of::<setup_header>();
            vm_memory::ByteValued::as_mut_slice(&mut h).copy_from_slice(&image[0x1f1..0x1f1 + n]);
            h
        };
        // The kernel's own fields come through unchanged.
        assert_eq!({ hdr.version }, { file_hdr.version });
        assert!({ hdr.version } >= PROTOCOL_64BIT_ENTRY);
        assert_ne!({ hdr.xloadflags } & XLF_KERNEL_64, 0);
        assert_eq!({ hdr.init_size }, { file_hdr.init_size });
        assert_eq!({ hdr.kernel_alignment }, { file_hdr.kernel_alignment });
        assert_eq!({ hdr.setup_sects }, { file_hdr.setup_sects });
        // The protected-mode code is at 1 MiB, byte for byte.
        let setup = (usize::from(file_hdr.setup_sects) + 1) * 512;
        assert_eq!(
            read(&mem, 0x10_0000, 4096),
            image[setup..setup + 4096].to_vec()
        );
        assert_eq!(boot.entry, GuestAddress(0x10_0200));
        let (addr, size) = boot.initrd.unwrap();
        assert!(addr.0 + size <= u64::from(file_hdr.initrd_addr_max) + 1);
        assert!(addr.0 >= 0x10_0000 + u64::from(file_hdr.init_size));
        assert_eq!({ hdr.ramdisk_image }, addr.0 as u32);
    }
}
