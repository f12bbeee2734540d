//! ACPI tables: how the kernel finds the vCPUs (MADT), the IOAPIC, the
//! virtio-mmio devices (DSDT devices with the `LNRO0005` id the virtio-mmio
//! driver matches) and the PCI root bus, when there is one (`PNP0A03`, with
//! bus 0, the configuration ports and the BAR window as resources). ACPI
//! rather than an MP table or `virtio_mmio.device=`: distribution kernels
//! (Debian's cloud kernel among them) build neither MP-table parsing nor
//! command-line virtio-mmio devices.
//!
//! The platform is declared hardware-reduced: no PM timer, SCI or legacy
//! PIC to emulate; interrupts go through the IOAPIC. Without a legacy PIC
//! the kernel maps no ISA interrupt by itself, so COM1 is described too
//! (`PNP0501` with its ports and GSI 4), or the console would have no
//! interrupt and user space output would never leave. Power-off goes
//! through the hardware-reduced sleep registers ([`super::acpi_pm`]) and
//! the `_S5_` object, so a guest's `poweroff` ends the VM.

use super::acpi_pm::{SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, SLP_TYP_S5};
use super::layout::{
    MmioDevice, ACPI_START, BIOS_END, IOAPIC_ADDR, LAPIC_ADDR, MAX_VCPUS, PCI_WINDOW_BASE,
    PCI_WINDOW_SIZE, SERIAL_GSI, SERIAL_PORT,
};
use super::Error;
use crate::devices::pci::{CONFIG_PORTS, CONFIG_PORTS_LEN};
use crate::memory::GuestMemory;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress};

const OEM_ID: [u8; 6] = *b"SSV   ";
const OEM_TABLE_ID: [u8; 8] = *b"SSVVMM  ";
const OEM_REVISION: u32 = 1;
/// The ACPI id the Linux virtio-mmio driver binds to.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// IAPC_BOOT_ARCH: no VGA.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IAPC_BOOT_ARCH: no CMOS RTC, so the kernel leaves ports 0x70/0x71 alone.
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// Where the tables went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    pub rsdp: GuestAddress,
    /// First byte after the last table.
    pub end: GuestAddress,
}

/// AML already encoded, to nest objects built one at a time.
struct Encoded(Vec<u8>);

impl Aml for Encoded {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The ACPI id of a 16550-compatible UART.
pub const UART_16550_HID: &str = "PNP0501";

/// COM1: its eight ports and its edge-triggered GSI.
fn com1() -> Encoded {
    let io = aml::IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, SERIAL_GSI);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new(UART_16550_HID));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    let device = aml::Device::new("COM1".into(), vec![&hid, &uid, &crs_name]);
    Encoded(to_bytes(&device))
}

/// The ACPI id of a PCI root bridge.
pub const PCI_ROOT_HID: &str = "PNP0A03";

/// The PCI root: segment 0, bus 0, the mechanism #1 ports and the window
/// the BARs are placed in. No `_PRT`: the devices use MSI-X only.
fn pci_root() -> Encoded {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new(PCI_ROOT_HID));
    let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let ports = aml::IO::new(
        CONFIG_PORTS as u16,
        CONFIG_PORTS as u16,
        1,
        CONFIG_PORTS_LEN as u8,
    );
    let window = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        PCI_WINDOW_BASE as u32,
        (PCI_WINDOW_BASE + PCI_WINDOW_SIZE - 1) as u32,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &ports, &window]);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    let device = aml::Device::new("PCI0".into(), vec![&hid, &adr, &seg, &uid, &crs_name]);
    Encoded(to_bytes(&device))
}

/// `_S5_`: the soft-off state's SLP_TYP, which the kernel writes to the
/// sleep control register to power off.
fn s5() -> Encoded {
    let typ = aml::Package::new(vec![&SLP_TYP_S5, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    Encoded(to_bytes(&aml::Name::new("_S5_".into(), &typ)))
}

/// The DSDT: COM1, `_S5_`, one device per virtio-mmio window, with its
/// MMIO range and its edge-triggered GSI, and the PCI root if `pci`.
pub fn dsdt(devices: &[MmioDevice], pci: bool) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    s5().to_aml_bytes(&mut body);
    let mut names = Vec::with_capacity(devices.len());
    for (i, _) in devices.iter().enumerate() {
        names.push(format!("V{i:03X}"));
    }
    let mut device_aml: Vec<Encoded> = Vec::with_capacity(devices.len() + 1);
    device_aml.push(com1());
    for (dev, name) in devices.iter().zip(&names) {
        let base = u32::try_from(dev.addr).map_err(|_| Error::Layout("virtio-mmio above 4 GiB"))?;
        let size = u32::try_from(dev.size).map_err(|_| Error::Layout("virtio-mmio window size"))?;
        let mem = aml::Memory32Fixed::new(true, base, size);
        let irq = aml::Interrupt::new(true, true, false, false, dev.gsi);
        let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
        let hid = aml::Name::new("_HID".into(), &VIRTIO_MMIO_HID);
        let uid_value = device_aml.len() - 1;
        let uid = aml::Name::new("_UID".into(), &uid_value);
        let crs_name = aml::Name::new("_CRS".into(), &crs);
        let device = aml::Device::new(name.as_str().into(), vec![&hid, &uid, &crs_name]);
        device_aml.push(Encoded(to_bytes(&device)));
    }
    if pci {
        device_aml.push(pci_root());
    }
    let children: Vec<&dyn Aml> = device_aml.iter().map(|d| d as &dyn Aml).collect();
    let scope = aml::Scope::new("_SB_".into(), children);
    scope.to_aml_bytes(&mut body);

    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&body);
    Ok(sdt.as_slice().to_vec())
}

/// The MADT: one enabled local APIC per vCPU (APIC id = vCPU index) and
/// KVM's IOAPIC with GSI base 0.
pub fn madt(vcpus: usize) -> Result<Vec<u8>, Error> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::VcpuCount(vcpus));
    }
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR as u32),
    );
    for i in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(
            i as u8,
            i as u8,
            EnabledStatus::Enabled,
        ));
    }
    // KVM's IOAPIC resets with id 0; the kernel uses the id it reads anyway.
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR as u32, 0));
    Ok(to_bytes(&madt))
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT from [`ACPI_START`] on.
pub fn write(
    mem: &GuestMemory,
    vcpus: usize,
    devices: &[MmioDevice],
    pci: bool,
) -> Result<AcpiTables, Error> {
    let dsdt = dsdt(devices, pci)?;
    let madt = madt(vcpus)?;
    let align = |a: u64| (a + 15) & !15;

    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    // XSDT: header plus two 64-bit pointers.
    let fadt_addr = align(xsdt_addr + 36 + 2 * 8);
    let madt_addr = align(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let dsdt_addr = align(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > BIOS_END {
        return Err(Error::Layout("ACPI tables do not fit below 1 MiB"));
    }

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    fadt.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    let port = |addr: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            addr.into(),
        )
    };
    fadt.sleep_control_reg = port(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = port(SLEEP_STATUS_PORT);
    let fadt = to_bytes(&fadt.finalize());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    for (what, addr, bytes) in [
        ("RSDP", rsdp_addr, &rsdp),
        ("XSDT", xsdt_addr, &xsdt),
        ("FADT", fadt_addr, &fadt),
        ("MADT", madt_addr, &madt),
        ("DSDT", dsdt_addr, &dsdt),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| Error::GuestWrite(what, e))?;
    }
    Ok(AcpiTables {
        rsdp: GuestAddress(rsdp_addr),
        end: GuestAddress(end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::virtio_mmio_device;
    use vm_memory::GuestMemoryMmap;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    /// Reads a whole table (length from its header) out of guest memory.
    fn table(mem: &GuestMemory, addr: u64) -> Vec<u8> {
        let mut head = [0u8; 8];
        mem.read_slice(&mut head, GuestAddress(addr)).unwrap();
        let mut t = vec![0u8; u32_at(&head, 4) as usize];
        mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
        assert_eq!(
            sum(&t),
            0,
            "checksum of {}",
            String::from_utf8_lossy(&t[..4])
        );
        t
    }

    #[test]
    fn kernel_finds_cpus_ioapic_and_devices_from_the_rsdp() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let devices: Vec<MmioDevice> = (0..3).map(|i| virtio_mmio_device(i).unwrap()).collect();
        let tables = write(&mem, 4, &devices, true).unwrap();
        assert!(tables.end.0 <= BIOS_END);

        // The kernel scans 0xe0000..0x100000 on 16-byte boundaries.
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, tables.rsdp).unwrap();
        assert_eq!(tables.rsdp.0 % 16, 0);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP with an XSDT");

        let xsdt = table(&mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let pointed: Vec<Vec<u8>> = (36..xsdt.len())
            .step_by(8)
            .map(|off| table(&mem, u64_at(&xsdt, off)))
            .collect();
        let sigs: Vec<&[u8]> = pointed.iter().map(|t| &t[..4]).collect();
        assert_eq!(sigs, vec![b"FACP".as_slice(), b"APIC".as_slice()]);

        let fadt = &pointed[0];
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        let dsdt = table(&mem, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        // Sleep control and status: byte-wide system I/O registers at the
        // ports the power-off device serves.
        for (off, port) in [(244, SLEEP_CONTROL_PORT), (256, SLEEP_STATUS_PORT)] {
            assert_eq!(&fadt[off..off + 4], &[1, 8, 0, 1], "GAS at {off}");
            assert_eq!(u64_at(fadt, off + 4), u64::from(port));
        }

        let madt = &pointed[1];
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR as u32);
        let mut lapics = Vec::new();
        let mut ioapics = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let (ty, len) = (madt[off], madt[off + 1] as usize);
            match ty {
                0 => lapics.push((madt[off + 2], madt[off + 3], u32_at(madt, off + 4))),
                1 => ioapics.push((u32_at(madt, off + 4), u32_at(madt, off + 8))),
                _ => panic!("unexpected MADT entry {ty}"),
            }
            off += len;
        }
        assert_eq!(lapics, vec![(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)]);
        assert_eq!(ioapics, vec![(IOAPIC_ADDR as u32, 0)]);

        // Each device's id, window and GSI are encoded in the DSDT.
        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(VIRTIO_MMIO_HID.as_bytes()), 3);
        // The PCI root: PNP0A03 as an EISA id, the mechanism #1 ports, and
        // the window as a DWord memory range (tag 0x87, length 23).
        assert_eq!(count(&[0x0c, 0x41, 0xd0, 0x0a, 0x03]), 1, "_HID PNP0A03");
        assert_eq!(count(&[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]), 1);
        let mut window = vec![0x87, 23, 0, 0];
        window.extend_from_slice(&[0x0c, 0x01, 0, 0, 0, 0]);
        window.extend_from_slice(&(PCI_WINDOW_BASE as u32).to_le_bytes());
        window.extend_from_slice(&((PCI_WINDOW_BASE + PCI_WINDOW_SIZE - 1) as u32).to_le_bytes());
        assert_eq!(count(&window), 1, "the BAR window");
        let no_pci = super::dsdt(&devices, false).unwrap();
        assert!(!no_pci
            .windows(5)
            .any(|w| w == [0x0c, 0x41, 0xd0, 0x0a, 0x03]));
        // COM1: PNP0501 as an EISA id, its ports (IO descriptor: decode16,
        // min, max, alignment 1, 8 ports) and GSI 4, edge-triggered.
        assert_eq!(count(&[0x0c, 0x41, 0xd0, 0x05, 0x01]), 1, "_HID PNP0501");
        assert_eq!(count(&[0x47, 1, 0xf8, 0x03, 0xf8, 0x03, 1, 8]), 1);
        assert_eq!(count(&[0x89, 6, 0, 0b11, 1, 4, 0, 0, 0]), 1, "COM1's irq");
        // _S5_ is a package whose first element is SLP_TYP 5.
        let s5 = dsdt.windows(4).position(|w| w == b"_S5_").expect("_S5_");
        assert_eq!(dsdt[s5 + 4], 0x12, "a package");
        assert_eq!(&dsdt[s5 + 7..s5 + 9], &[0x0a, SLP_TYP_S5]);
        for dev in &devices {
            // Memory32Fixed: tag 0x86, length 9, rw, base, length.
            let mut m = vec![0x86, 9, 0, 1];
            m.extend_from_slice(&(dev.addr as u32).to_le_bytes());
            m.extend_from_slice(&(dev.size as u32).to_le_bytes());
            assert_eq!(count(&m), 1, "window of {dev:?}");
            // Extended IRQ: tag 0x89, length 6, consumer|edge, one GSI.
            let mut irq = vec![0x89, 6, 0, 0b11, 1];
            irq.extend_from_slice(&dev.gsi.to_le_bytes());
            assert_eq!(count(&irq), 1, "irq of {dev:?}");
        }
    }

    #[test]
    fn vcpu_count_is_bounded() {
        assert!(matches!(madt(0), Err(Error::VcpuCount(0))));
        assert!(matches!(madt(MAX_VCPUS + 1), Err(Error::VcpuCount(_))));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let all: Vec<MmioDevice> = (0..19).filter_map(virtio_mmio_device).collect();
        let tables = write(&mem, MAX_VCPUS, &all, true).unwrap();
        assert!(tables.end.0 <= BIOS_END);
    }
}
