//! A VM under KVM: guest memory registered as memory slots, the device
//! buses, and the vCPU threads with their pause, resume and stop.
//!
//! What this machine's /dev/kvm does (probed with kvm-ioctls, API 12, no
//! hardware virtualisation: the host kernel emulates real-mode code at about
//! 1.5–2 µs per instruction, `rep` string instructions at about 1–2.5 µs per
//! element):
//! - memory slots, port I/O exits, MMIO exits (outside every slot), HLT
//!   exits (without an in-kernel irqchip) and `immediate_exit` all work;
//! - `create_irq_chip` (PIC + IOAPIC + LAPIC), `create_pit2`,
//!   `register_irqfd` (after the irqchip) and `register_ioevent` (with or
//!   without the irqchip, with a datamatch) all work. So the VM always has
//!   the in-kernel irqchip, virtio notifications arrive on ioeventfds and
//!   interrupts leave through irqfds, as on a host with hardware support.
//! - With the in-kernel irqchip HLT is handled in the kernel (the vCPU
//!   sleeps until an interrupt), so a guest cannot end the VM by halting:
//!   it writes its exit code to the exit port ([`crate::devices::exit_port`]).
//!   A vCPU asleep in the kernel is woken for pause and stop by a signal.

pub mod bus;
pub mod vcpu;

use crate::memory::GuestMemory;
use bus::Bus;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot create the VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot allocate guest memory: {0}")]
    Memory(String),
    #[error("cannot register guest memory at {addr:#x}: {source}")]
    MemorySlot {
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot create vCPU {id}: {source}")]
    CreateVcpu {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up vCPU {id}: {reason}")]
    SetupVcpu { id: u8, reason: String },
    #[error("cannot start the vCPU threads: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the VM has stopped")]
    Stopped,
}

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest wrote this code to the exit port.
    Guest(u8),
    /// The guest powered off (ACPI on x86, PSCI SYSTEM_OFF).
    Shutdown,
    /// The guest reset: an x86 triple fault (a crashed guest) or a reset
    /// request. ssv-vmm does not reboot guests, so the VM ends, and not as
    /// a power-off would.
    Reset,
    /// A vCPU halted without an in-kernel irqchip to wake it.
    Halted,
    /// The host asked the VM to stop.
    Stopped,
    /// KVM failed or exited in a way the VMM cannot serve.
    Error(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    Paused,
    Stopping,
}

struct State {
    run: RunState,
    /// vCPU threads parked in the paused state.
    parked: usize,
    /// vCPU threads started and not yet returned.
    live: usize,
    exit: Option<VmExit>,
}

/// The VM's run state, shared by the vCPU threads, the devices that can
/// end the VM and the VMM's control code.
pub struct Control {
    state: Mutex<State>,
    changed: Condvar,
    /// The vCPU threads, to be kicked out of KVM_RUN.
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl Control {
    fn new() -> Control {
        Control {
            state: Mutex::new(State {
                run: RunState::Running,
                parked: 0,
                live: 0,
                exit: None,
            }),
            changed: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the VM for `why` (the first reason given wins).
    pub fn request_exit(&self, why: VmExit) {
        {
            let mut st = self.lock();
            if st.exit.is_none() {
                st.exit = Some(why);
            }
            st.run = RunState::Stopping;
            self.changed.notify_all();
        }
        self.kick();
    }

    /// Why the VM stopped, once it has.
    pub fn exit(&self) -> Option<VmExit> {
        self.lock().exit.clone()
    }

    fn kick(&self) {
        let threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        for &t in threads.iter() {
            vcpu::kick(t);
        }
    }

    /// Called by a vCPU thread before each KVM_RUN: waits while the VM is
    /// paused; false once it is stopping.
    fn runnable(&self) -> bool {
        let mut st = self.lock();
        loop {
            match st.run {
                RunState::Running => return true,
                RunState::Stopping => return false,
                RunState::Paused => {
                    st.parked += 1;
                    self.changed.notify_all();
                    st = self
                        .changed
                        .wait_while(st, |s| s.run == RunState::Paused)
                        .unwrap_or_else(PoisonError::into_inner);
                    st.parked -= 1;
                }
            }
        }
    }

    fn thread_done(&self) {
        let mut st = self.lock();
        st.live -= 1;
        self.changed.notify_all();
    }
}

/// A VM being built: memory in place, devices being added, no vCPU yet.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    memory: GuestMemory,
    mmio: Bus,
    pio: Bus,
    control: Arc<Control>,
    /// Created, set up, not yet running.
    vcpus: Vec<VcpuFd>,
}

impl Vm {
    /// A VM with guest RAM at `ranges` (address, bytes), each a memory slot.
    pub fn new(ranges: &[(GuestAddress, usize)]) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let memory =
            GuestMemory::from_ranges(ranges).map_err(|e| VmError::Memory(format!("{e:?}")))?;
        for (slot, region) in memory.iter().enumerate() {
            let addr = region.start_addr().0;
            let table = kvm_bindings::kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: addr,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the mapping is `region.len()` bytes at `as_ptr()` and
            // lives in `memory`, which the Vm (and every vCPU thread, through
            // its clone) keeps until the VM fd and vCPUs are gone.
            unsafe { fd.set_user_memory_region(table) }
                .map_err(|source| VmError::MemorySlot { addr, source })?;
        }
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            memory,
            mmio: Bus::new(),
            pio: Bus::new(),
            control: Arc::new(Control::new()),
            vcpus: Vec::new(),
        })
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }
    /// The VM's KVM fd, for the architecture's setup, ioeventfds and irqfds.
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }
    pub fn mmio_bus(&mut self) -> &mut Bus {
        &mut self.mmio
    }
    pub fn pio_bus(&mut self) -> &mut Bus {
        &mut self.pio
    }
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Creates `count` vCPUs, lets `setup` set each one's registers
    /// (architecture and boot code), and runs each on its own thread.
    pub fn start(
        mut self,
        count: u8,
        setup: &dyn Fn(&Kvm, &VcpuFd, u8) -> Result<(), String>,
    ) -> Result<RunningVm, VmError> {
        self.create_vcpus(count, setup)?;
        self.run()
    }

    /// Creates `count` more vCPUs and lets `setup` set each one up, without
    /// running them: what must follow the vCPUs' creation and precede their
    /// first run (the aarch64 GIC, then the irqfds that need it) goes
    /// between this and [`Vm::run`].
    pub fn create_vcpus(
        &mut self,
        count: u8,
        setup: &dyn Fn(&Kvm, &VcpuFd, u8) -> Result<(), String>,
    ) -> Result<(), VmError> {
        for _ in 0..count {
            let id = u8::try_from(self.vcpus.len()).map_err(|_| VmError::CreateVcpu {
                id: u8::MAX,
                source: kvm_ioctls::Error::new(libc::EINVAL),
            })?;
            let fd = self
                .fd
                .create_vcpu(u64::from(id))
                .map_err(|source| VmError::CreateVcpu { id, source })?;
            setup(&self.kvm, &fd, id).map_err(|reason| VmError::SetupVcpu { id, reason })?;
            self.vcpus.push(fd);
        }
        Ok(())
    }

    /// Runs each vCPU made by [`Vm::create_vcpus`] on its own thread.
    pub fn run(self) -> Result<RunningVm, VmError> {
        let vcpus = self.vcpus;
        vcpu::install_kick_handler().map_err(VmError::Thread)?;
        // Before any vCPU runs under its filter (see `threads`).
        crate::threads::start_spawner().map_err(VmError::Thread)?;
        let buses = Arc::new(vcpu::Buses {
            mmio: self.mmio,
            pio: self.pio,
        });
        let mut threads = Vec::with_capacity(vcpus.len());
        let running = RunningVm {
            control: self.control.clone(),
            threads: Vec::new(),
            _fd: self.fd,
            _memory: self.memory,
        };
        for (id, fd) in vcpus.into_iter().enumerate() {
            running.control.lock().live += 1;
            let thread = vcpu::spawn(id as u8, fd, buses.clone(), running.control.clone());
            match thread {
                Ok(t) => {
                    use std::os::unix::thread::JoinHandleExt;
                    running
                        .control
                        .threads
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(t.as_pthread_t());
                    threads.push(t)
                }
                Err(e) => {
                    running.control.lock().live -= 1;
                    let mut running = running;
                    running.threads = threads;
                    running.stop();
                    return Err(VmError::Thread(e));
                }
            }
        }
        let mut running = running;
        running.threads = threads;
        Ok(running)
    }
}

/// A VM whose vCPUs run. Dropping it stops the VM and joins the threads.
pub struct RunningVm {
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    // Kept until the vCPU threads are joined.
    _fd: Arc<VmFd>,
    _memory: GuestMemory,
}

impl RunningVm {
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Stops every vCPU outside KVM_RUN; returns once all are parked.
    pub fn pause(&self) -> Result<(), VmError> {
        {
            let mut st = self.control.lock();
            if st.run == RunState::Stopping {
                return Err(VmError::Stopped);
            }
            st.run = RunState::Paused;
        }
        self.control.kick();
        let st = self.control.lock();
        let st = self
            .control
            .changed
            .wait_while(st, |s| s.run == RunState::Paused && s.parked < s.live)
            .unwrap_or_else(PoisonError::into_inner);
        if st.run == RunState::Stopping {
            return Err(VmError::Stopped);
        }
        Ok(())
    }

    pub fn resume(&self) -> Result<(), VmError> {
        let mut st = self.control.lock();
        if st.run == RunState::Stopping {
            return Err(VmError::Stopped);
        }
        st.run = RunState::Running;
        self.control.changed.notify_all();
        Ok(())
    }

    /// Waits until the VM stops by itself (or through [`Control`]).
    pub fn wait(&self) -> VmExit {
        let st = self.control.lock();
        let st = self
            .control
            .changed
            .wait_while(st, |s| s.exit.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        st.exit.clone().unwrap_or(VmExit::Stopped)
    }

    /// Stops the vCPUs and joins their threads; returns why the VM stopped.
    pub fn stop(&mut self) -> VmExit {
        self.control.request_exit(VmExit::Stopped);
        // No kick may reach a thread id after its thread is joined.
        self.control
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
        self.control.exit().unwrap_or(VmExit::Stopped)
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop();
    }
}
