//! `ssv-vmm`: runs one VM under KVM with virtio-blk disks on thin volumes.
//!
//! ```text
//! ssv-vmm --memory MiB --vcpus N (--realmode IMAGE | --kernel K [--initrd I] [--cmdline C])
//!         --disk SPEC... --serial PATH|stdout
//! ```
//! Disks are virtio-pci functions on x86_64 Linux guests (an MSI-X vector
//! per queue) and virtio-mmio windows otherwise; `--virtio-transport mmio`
//! chooses MMIO on x86_64 too.
//!
//! A disk SPEC is `dir=DIR,top=NAME[,readonly]` or
//! `vg=VG,lv=TOP,pv=PATH[,pv=PATH...][,readonly]`, with `threshold=PCT` and
//! `chunk=SIZE` to set the growth policy and `queues=N` (default: one per
//! vCPU). The exit status is the code the guest wrote to the exit port
//! (x86_64), 0 when it shut down (ACPI or PSCI power-off, reset), 1 on a
//! VMM error.
//!
//! The machine differs by architecture ([`platform`]): on x86_64 COM1, the
//! exit port and the ACPI sleep registers are on port I/O and the disks'
//! interrupts are IOAPIC pins; on aarch64 the UART is MMIO, interrupts are
//! GICv3 SPIs, and the GIC can only be made once the vCPUs exist, so the
//! devices' irqfds are registered between creating the vCPUs and running
//! them.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vmm::config::{Boot, DiskSpec, DiskStore, SerialOutput, Transport, VmConfig, MIB};
use vmm::devices::serial::Serial;
use vmm::devices::virtio::block::{Block, BlockOptions, Fence, ThinDisk};
use vmm::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY, WINDOW_SIZE};
use vmm::vm::{RunningVm, Vm, VmExit};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Parser)]
#[command(about = "Runs one VM under KVM on thin disks")]
struct Args {
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// A flat 16-bit image started at 0:0x7c00.
    #[arg(long, conflicts_with = "kernel", required_unless_present = "kernel")]
    realmode: Option<PathBuf>,
    /// A Linux kernel (bzImage or ELF vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    #[arg(
        long,
        requires = "kernel",
        default_value = "console=ttyS0 reboot=t panic=1"
    )]
    cmdline: String,
    /// A virtio-blk disk (repeatable).
    #[arg(long)]
    disk: Vec<DiskSpec>,
    /// Where the serial console goes: a file, or stdout.
    #[arg(long, default_value = "stdout")]
    serial: SerialOutput,
    /// A disk opened through ssvd: `ssvd=SOCKET,volume=ID[,readonly]` (repeatable).
    #[arg(long)]
    ssvd_disk: Vec<vmm::disks::SsvdDiskSpec>,
    /// Serve the control API on this Unix socket.
    #[arg(long)]
    api: Option<PathBuf>,
    /// How disks are attached (default: pci for an x86_64 Linux guest,
    /// else mmio).
    #[arg(long, value_enum)]
    virtio_transport: Option<Transport>,
}

impl Args {
    fn config(self) -> VmConfig {
        let boot = match (self.realmode, self.kernel) {
            (Some(image), _) => Boot::RealMode { image },
            (None, kernel) => Boot::Linux {
                kernel: kernel.unwrap_or_default(),
                initrd: self.initrd,
                cmdline: self.cmdline,
            },
        };
        let virtio_mmio_base = platform::virtio_mmio_base(&boot);
        let transport = self
            .virtio_transport
            .unwrap_or_else(|| platform::default_transport(&boot));
        VmConfig {
            memory_mib: self.memory,
            vcpus: self.vcpus,
            boot,
            disks: self.disk,
            serial: self.serial,
            virtio_mmio_base,
            transport,
        }
    }
}

/// A disk as opened: its volume (flushed at exit) and its device.
struct OpenDisk {
    volume: Arc<thin::Volume>,
    block: Block,
}

fn open_disk(spec: &DiskSpec, vcpus: u8) -> Result<OpenDisk> {
    let store: Arc<dyn thin::LvStore> = match &spec.store {
        DiskStore::Dir(dir) => Arc::new(thin::DirStore::new(dir, 4 * MIB)),
        DiskStore::Vg { vg, pvs } => {
            let devs = pvs
                .iter()
                .map(|p| {
                    let opts = san::OpenOptions::new().read_only(spec.readonly);
                    let dev = san::FileDev::open(p, &opts)
                        .with_context(|| format!("opening PV {}", p.display()))?;
                    Ok(lvm::PvDev::new(Arc::new(dev), p.display().to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(thin::VgStore::open(&devs, vg).with_context(|| format!("opening VG {vg}"))?)
        }
    };
    let mut opts = if spec.readonly {
        thin::OpenOptions::read_only()
    } else {
        thin::OpenOptions::default().with_extender(Arc::new(thin::StoreExtender(store.clone())))
    };
    if let Some(p) = spec.threshold_percent {
        opts.policy.threshold_percent = p;
    }
    if let Some(c) = spec.chunk {
        opts.policy.chunk = c;
    }
    let volume = Arc::new(
        thin::Volume::open(&*store, &spec.top, &opts)
            .with_context(|| format!("opening volume {}", spec.top))?,
    );
    let disk = Arc::new(ThinDisk::new(volume.clone(), spec.readonly));
    let fence = Fence::new().context("creating the disk's fence")?;
    let mut block_opts = BlockOptions::new(&spec.top);
    block_opts.num_queues = spec.queues.unwrap_or(queues_for(vcpus));
    let block = Block::new(disk, block_opts, fence)?;
    Ok(OpenDisk { volume, block })
}

/// A disk's virtio queues unless told: one per vCPU, so that no two vCPUs
/// contend for one queue.
fn queues_for(vcpus: u8) -> u16 {
    u16::from(vcpus.max(1)).min(vmm::devices::virtio::block::MAX_QUEUES)
}

fn irqfd(vm: &Vm, gsi: u32) -> Result<EventFd> {
    let fd = EventFd::new(EFD_NONBLOCK).context("creating an irqfd")?;
    vm.fd()
        .register_irqfd(&fd, gsi)
        .with_context(|| format!("registering the irqfd of GSI {gsi}"))?;
    Ok(fd)
}

fn run(
    cfg: VmConfig,
    ssvd_specs: &[vmm::disks::SsvdDiskSpec],
    api: Option<&std::path::Path>,
) -> Result<VmExit> {
    let bytes = cfg
        .memory_mib
        .checked_mul(MIB)
        .ok_or_else(|| anyhow!("--memory {} MiB is too large", cfg.memory_mib))?;
    let mut vm = Vm::new(&platform::ram_ranges(&cfg.boot, bytes))?;
    platform::before_vcpus(&vm)?;
    let pci = cfg.transport == Transport::Pci;
    platform::check_transport(&cfg.boot, cfg.transport)?;
    let mmio_disks = if pci {
        0
    } else {
        cfg.disks.len() + ssvd_specs.len()
    };
    let windows: Vec<platform::Window> = (0..mmio_disks)
        .map(|i| platform::window(cfg.virtio_mmio_base, i))
        .collect::<Result<_>>()?;
    let out: Box<dyn std::io::Write + Send> = match &cfg.serial {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::File(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
    };

    let mut volumes = Vec::new();
    let mut blocks = Vec::new();
    for spec in &cfg.disks {
        let disk = open_disk(spec, cfg.vcpus)?;
        volumes.push(disk.volume);
        blocks.push(disk.block);
    }
    let hub = Arc::new(vmm::api::EventHub::default());
    let space = Arc::new(vmm::api::vm::SpaceEvents::new(hub.clone()));
    let ssvd_disks =
        vmm::disks::open_all(ssvd_specs, queues_for(cfg.vcpus), &hub, &space, &mut blocks)?;

    let vcpus = cfg.vcpus;
    let _irqchip = platform::create_vcpus(&mut vm, &cfg.boot, vcpus, &windows, pci)?;
    let serial = Serial::new(out, Some(irqfd(&vm, platform::SERIAL_GSI)?));
    platform::add_devices(&mut vm, serial)?;
    if pci {
        platform::add_pci(&mut vm, blocks)?;
    } else {
        add_mmio(&mut vm, blocks, &windows)?;
    }
    let running: RunningVm = vm.run()?;
    let running = Arc::new(running);
    let server = api
        .map(|p| vmm::api::serve_vm(p, &running, vcpus, bytes, &ssvd_disks, &hub, &space))
        .transpose()?;
    let why = running.wait();
    hub.emit(
        vmm::api::kind::SHUTDOWN,
        serde_json::json!({"exit": format!("{why:?}")}),
    );
    drop(server);
    match Arc::try_unwrap(running) {
        Ok(mut r) => drop(r.stop()),
        // An API connection still holds the VM: its threads end with it.
        Err(r) => r.control().request_exit(VmExit::Stopped),
    }
    for v in &volumes {
        v.flush().context("flushing a disk at exit")?;
    }
    for d in &ssvd_disks {
        d.close()
            .map_err(|e| anyhow!("closing disk {}: {e}", d.id()))?;
    }
    Ok(why)
}

/// The disks as virtio-mmio windows, each on its own interrupt line.
fn add_mmio(vm: &mut Vm, blocks: Vec<Block>, windows: &[platform::Window]) -> Result<()> {
    for (block, window) in blocks.into_iter().zip(windows) {
        let transport = MmioTransport::new(
            Box::new(block),
            vm.memory().clone(),
            Some(irqfd(vm, window.gsi)?),
        )?;
        for (q, fd) in transport.notify_fds().iter().enumerate() {
            vm.fd()
                .register_ioevent(
                    fd,
                    &kvm_ioctls::IoEventAddress::Mmio(window.addr + QUEUE_NOTIFY),
                    q as u32,
                )
                .context("registering a queue's ioeventfd")?;
        }
        vm.mmio_bus()
            .insert(window.addr, WINDOW_SIZE, Arc::new(Mutex::new(transport)))?;
    }
    Ok(())
}

/// Opens the kernel and initrd and makes the command line.
struct LinuxFiles {
    kernel: std::fs::File,
    initrd: Option<std::fs::File>,
}

fn open_linux(kernel: &std::path::Path, initrd: Option<&std::path::Path>) -> Result<LinuxFiles> {
    let open = |p: &std::path::Path| {
        std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))
    };
    Ok(LinuxFiles {
        kernel: open(kernel)?,
        initrd: initrd.map(open).transpose()?,
    })
}

#[cfg(target_arch = "x86_64")]
mod platform {
    //! x86_64: the in-kernel PIC/IOAPIC/PIT, COM1, the exit port and the
    //! ACPI sleep registers on port I/O; disks as virtio-pci functions on
    //! bus 0 with their BARs in the 32-bit hole, or as virtio-mmio windows
    //! there on IOAPIC pins (below 1 MiB, on one vCPU, for a real-mode
    //! guest).
    use super::*;
    use vmm::arch::x86_64::{acpi_pm, cpuid, layout, linux, machine, realmode, regs};
    use vmm::devices::exit_port::{ExitPort, EXIT_PORT};
    use vmm::devices::pci::{ConfigPorts, PciBus, PciWindow, CONFIG_PORTS, CONFIG_PORTS_LEN};
    use vmm::devices::serial::{COM1_BASE, COM1_IRQ, COM1_LEN};
    use vmm::devices::virtio::pci::{VirtioPciDevice, BAR_SIZE};

    pub const SERIAL_GSI: u32 = COM1_IRQ;
    pub type Window = layout::MmioDevice;

    pub fn virtio_mmio_base(boot: &Boot) -> u64 {
        match boot {
            Boot::RealMode { .. } => realmode::VIRTIO_MMIO_BASE,
            Boot::Linux { .. } => layout::VIRTIO_MMIO_BASE,
        }
    }

    pub fn ram_ranges(boot: &Boot, bytes: u64) -> Vec<(vm_memory::GuestAddress, usize)> {
        match boot {
            Boot::RealMode { .. } => realmode::ram_ranges(bytes),
            Boot::Linux { .. } => layout::ram_ranges(bytes),
        }
    }

    pub fn default_transport(boot: &Boot) -> Transport {
        match boot {
            Boot::RealMode { .. } => Transport::Mmio,
            Boot::Linux { .. } => Transport::Pci,
        }
    }

    pub fn check_transport(boot: &Boot, t: Transport) -> Result<()> {
        if matches!(boot, Boot::RealMode { .. }) && t == Transport::Pci {
            bail!("a real-mode guest has no PCI: use --virtio-transport mmio");
        }
        Ok(())
    }

    /// Bus 0 with the host bridge and each disk as a virtio-pci function,
    /// its BAR placed in the window.
    pub fn add_pci(vm: &mut Vm, blocks: Vec<Block>) -> Result<()> {
        let mut bus = PciBus::new();
        let fd = vm.fd().clone();
        for block in blocks {
            let slot = bus.next_slot();
            let bar = layout::pci_bar(slot, BAR_SIZE)
                .filter(|_| slot < vmm::devices::pci::SLOTS)
                .ok_or_else(|| {
                    anyhow!(
                        "too many disks: {} at most on PCI",
                        vmm::devices::pci::SLOTS - 1
                    )
                })?;
            let dev = VirtioPciDevice::new(
                Box::new(block),
                vm.memory().clone(),
                bar,
                fd.clone(),
                Some(fd.clone()),
            )?;
            bus.add(Arc::new(Mutex::new(dev)))?;
        }
        let ports = ConfigPorts::new(bus.clone());
        vm.pio_bus()
            .insert(CONFIG_PORTS, CONFIG_PORTS_LEN, Arc::new(Mutex::new(ports)))?;
        let window = PciWindow::new(bus, layout::PCI_WINDOW_BASE);
        vm.mmio_bus().insert(
            layout::PCI_WINDOW_BASE,
            layout::PCI_WINDOW_SIZE,
            Arc::new(Mutex::new(window)),
        )?;
        Ok(())
    }

    /// The irqchip and PIT, which irqfds need.
    pub fn before_vcpus(vm: &Vm) -> Result<()> {
        machine::setup_vm(vm.fd()).context("setting up the irqchip")
    }

    /// The `index`th virtio-mmio window from `base`, on the next IOAPIC pin.
    pub fn window(base: u64, index: usize) -> Result<Window> {
        let gsi = layout::VIRTIO_MMIO_FIRST_GSI + index as u32;
        if gsi >= layout::IOAPIC_PINS {
            bail!(
                "too many disks: {} at most",
                layout::VIRTIO_MMIO_MAX_DEVICES
            );
        }
        Ok(Window {
            addr: base + index as u64 * WINDOW_SIZE,
            size: WINDOW_SIZE,
            gsi,
        })
    }

    pub fn add_devices(vm: &mut Vm, serial: Serial) -> Result<()> {
        vm.pio_bus()
            .insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial)))?;
        let exit = ExitPort::new(vm.control().clone());
        vm.pio_bus()
            .insert(EXIT_PORT, 1, Arc::new(Mutex::new(exit)))?;
        // ACPI power-off: what a Linux guest's `poweroff` writes.
        let sleep = acpi_pm::SleepRegisters::new(vm.control().clone());
        vm.pio_bus().insert(
            u64::from(acpi_pm::SLEEP_CONTROL_PORT),
            acpi_pm::PORTS,
            Arc::new(Mutex::new(sleep)),
        )?;
        Ok(())
    }

    /// Nothing to hold: the in-kernel irqchip lives with the VM fd.
    pub struct IrqChip;

    /// Loads what `boot` names and creates the vCPUs at its entry.
    pub fn create_vcpus(
        vm: &mut Vm,
        boot: &Boot,
        vcpus: u8,
        windows: &[Window],
        pci: bool,
    ) -> Result<IrqChip> {
        match boot {
            Boot::RealMode { image } => {
                let bytes =
                    std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
                realmode::load(vm.memory(), &bytes)?;
                if vcpus != 1 {
                    bail!("a real-mode guest runs on one vCPU");
                }
                vm.create_vcpus(1, &|_, fd, _| {
                    realmode::setup_vcpu(fd).map_err(|e| e.to_string())
                })?;
            }
            Boot::Linux {
                kernel,
                initrd,
                cmdline,
            } => {
                let mut files = open_linux(kernel, initrd.as_deref())?;
                let mut line = linux_loader::cmdline::Cmdline::new(layout::CMDLINE_MAX_SIZE)
                    .map_err(|e| anyhow!("command line: {e}"))?;
                line.insert_str(cmdline)
                    .map_err(|e| anyhow!("command line: {e}"))?;
                let m = linux::Machine {
                    vcpus: usize::from(vcpus),
                    virtio_mmio: windows,
                    pci,
                };
                let boot = linux::load(
                    vm.memory(),
                    &mut files.kernel,
                    files.initrd.as_mut(),
                    &line,
                    &m,
                )?;
                let supported = cpuid::supported(vm.kvm()).context("reading KVM's CPUID")?;
                vm.create_vcpus(vcpus, &|_, fd, id| {
                    regs::setup_vcpu(fd, &boot, &supported, usize::from(id), usize::from(vcpus))
                        .map_err(|e| e.to_string())
                })?;
            }
        }
        Ok(IrqChip)
    }
}

#[cfg(target_arch = "aarch64")]
mod platform {
    //! aarch64: Image + device tree, vCPUs with in-kernel PSCI, then the
    //! GICv3 (which needs every vCPU to exist); the ns16550a UART and the
    //! virtio-mmio windows on MMIO, their interrupts GIC SPIs.
    use super::*;
    use vmm::arch::aarch64::{boot as arm_boot, gic, layout, regs};

    pub const SERIAL_GSI: u32 = layout::SERIAL_SPI;
    pub type Window = Spi;

    /// A virtio-mmio window and its SPI (the irqfd's GSI).
    #[derive(Clone, Copy, Debug)]
    pub struct Spi {
        pub addr: u64,
        pub gsi: u32,
    }

    pub fn virtio_mmio_base(_: &Boot) -> u64 {
        layout::VIRTIO_MMIO_BASE
    }

    pub fn ram_ranges(_: &Boot, bytes: u64) -> Vec<(vm_memory::GuestAddress, usize)> {
        layout::ram_ranges(bytes)
    }

    pub fn default_transport(_: &Boot) -> Transport {
        Transport::Mmio
    }

    /// MSI-X on aarch64 needs a GICv3 ITS, which this VMM does not make.
    pub fn check_transport(_: &Boot, t: Transport) -> Result<()> {
        if t == Transport::Pci {
            bail!("virtio-pci is for x86_64 guests: use --virtio-transport mmio");
        }
        Ok(())
    }

    pub fn add_pci(_: &mut Vm, _: Vec<Block>) -> Result<()> {
        bail!("virtio-pci is for x86_64 guests")
    }

    /// Nothing: the GIC comes once the vCPUs exist.
    pub fn before_vcpus(_: &Vm) -> Result<()> {
        Ok(())
    }

    pub fn window(base: u64, index: usize) -> Result<Window> {
        let dev = layout::virtio_mmio_device(index).ok_or_else(|| {
            anyhow!(
                "too many disks: {} at most",
                layout::VIRTIO_MMIO_MAX_DEVICES
            )
        })?;
        Ok(Spi {
            addr: base + (dev.addr - layout::VIRTIO_MMIO_BASE),
            gsi: dev.spi,
        })
    }

    pub fn add_devices(vm: &mut Vm, serial: Serial) -> Result<()> {
        vm.mmio_bus().insert(
            layout::SERIAL_ADDR,
            layout::SERIAL_SIZE,
            Arc::new(Mutex::new(serial)),
        )?;
        Ok(())
    }

    /// Loads the Image and device tree, creates the vCPUs at the kernel's
    /// entry, then the GIC; its fd is kept for the VM's life.
    pub fn create_vcpus(
        vm: &mut Vm,
        boot: &Boot,
        vcpus: u8,
        windows: &[Window],
        _pci: bool,
    ) -> Result<kvm_ioctls::DeviceFd> {
        let Boot::Linux {
            kernel,
            initrd,
            cmdline,
        } = boot
        else {
            bail!("a real-mode guest runs on x86_64 only");
        };
        let mut files = open_linux(kernel, initrd.as_deref())?;
        let devices: Vec<layout::MmioDevice> = windows
            .iter()
            .map(|w| layout::MmioDevice {
                addr: w.addr,
                size: WINDOW_SIZE,
                spi: w.gsi,
            })
            .collect();
        let m = arm_boot::Machine {
            vcpus: usize::from(vcpus),
            virtio_mmio: &devices,
        };
        let setup = arm_boot::load(
            vm.memory(),
            &mut files.kernel,
            files.initrd.as_mut(),
            cmdline,
            &m,
        )?;
        let fd = vm.fd().clone();
        vm.create_vcpus(vcpus, &|_, vcpu, id| {
            regs::setup_vcpu(&fd, vcpu, &setup, usize::from(id), usize::from(vcpus))
                .map_err(|e| e.to_string())
        })?;
        Ok(gic::create(vm.fd(), usize::from(vcpus))?)
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut args = Args::parse();
    let ssvd_disks = std::mem::take(&mut args.ssvd_disk);
    let api = args.api.take();
    let cfg = args.config();
    match run(cfg, &ssvd_disks, api.as_deref()) {
        Ok(VmExit::Guest(code)) => std::process::exit(i32::from(code)),
        Ok(VmExit::Shutdown | VmExit::Stopped) => std::process::exit(0),
        Ok(VmExit::Reset) => {
            eprintln!(
                "ssv-vmm: the guest reset (an x86 triple fault, i.e. it crashed, or a reset \
                 request); ssv-vmm does not reboot guests: start the VM again"
            );
            std::process::exit(1)
        }
        Ok(why) => {
            eprintln!("ssv-vmm: the VM stopped: {why:?}");
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("ssv-vmm: {e:#}");
            std::process::exit(1)
        }
    }
}
