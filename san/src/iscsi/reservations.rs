//! SCSI-3 persistent reservations on one path: the fencing primitives
//! (fence_scsi's pattern, spec §2 "PR fencing pattern"). A host registers
//! its key on every path (registrations belong to an I_T nexus), one
//! holds a Write Exclusive – Registrants Only reservation, and a survivor
//! fences a host by preempting its key: that host's writes then end in
//! RESERVATION CONFLICT while reads still work.

use super::lun::IscsiLun;
use super::session::DataPhase;
use super::IscsiError;
use crate::scsi::{
    Cdb, PrInAction, PrOutAction, PrOutParams, PrType, ReadKeys, ReadReservation, Sense,
};

/// READ KEYS answers: an 8-byte header and 8 bytes per key.
const PR_IN_ALLOC: u16 = 8192;

impl IscsiLun {
    fn pr_out(
        &self,
        action: PrOutAction,
        pr_type: Option<PrType>,
        key: u64,
        sa_key: u64,
    ) -> Result<(), IscsiError> {
        let params = PrOutParams {
            key,
            sa_key,
            spec_i_pt: false,
            all_tg_pt: false,
            aptpl: false,
        }
        .encode();
        let cdb = Cdb::PersistentReserveOut {
            action,
            pr_type,
            param_len: params.len() as u32,
        };
        self.command(&cdb, DataPhase::Out(&params)).map(drop)
    }

    fn pr_in(&self, action: PrInAction) -> Result<Vec<u8>, IscsiError> {
        let mut buf = vec![0u8; PR_IN_ALLOC as usize];
        let cdb = Cdb::PersistentReserveIn {
            action,
            alloc_len: PR_IN_ALLOC,
        };
        let done = self.command(&cdb, DataPhase::In(&mut buf))?;
        let got = (buf.len() as i64 - done.residual.max(0)).max(0) as usize;
        buf.truncate(got);
        Ok(buf)
    }

    /// Registers `key` on this path's nexus, replacing whatever this nexus
    /// had (REGISTER AND IGNORE EXISTING KEY).
    pub fn pr_register(&self, key: u64) -> Result<(), IscsiError> {
        self.pr_out(PrOutAction::RegisterAndIgnoreExistingKey, None, 0, key)
    }

    /// Removes this nexus's registration.
    pub fn pr_unregister(&self, key: u64) -> Result<(), IscsiError> {
        self.pr_out(PrOutAction::Register, None, key, 0)
    }

    pub fn pr_reserve(&self, key: u64, pr_type: PrType) -> Result<(), IscsiError> {
        self.pr_out(PrOutAction::Reserve, Some(pr_type), key, 0)
    }

    /// Removes `victim`'s registrations (and reservation) with our `key`:
    /// PREEMPT AND ABORT, which also aborts the victim's queued commands;
    /// targets without it (tgtd answers 05/24/00) get PREEMPT, which fences
    /// the same way for new commands.
    pub fn pr_preempt(&self, key: u64, victim: u64, pr_type: PrType) -> Result<(), IscsiError> {
        match self.pr_out(PrOutAction::PreemptAndAbort, Some(pr_type), key, victim) {
            Err(IscsiError::Scsi { sense: Some(s), .. }) if s.is(Sense::INVALID_FIELD_IN_CDB) => {
                self.pr_out(PrOutAction::Preempt, Some(pr_type), key, victim)
            }
            r => r,
        }
    }

    pub fn pr_read_keys(&self) -> Result<ReadKeys, IscsiError> {
        ReadKeys::decode(&self.pr_in(PrInAction::ReadKeys)?).map_err(IscsiError::Decode)
    }

    pub fn pr_read_reservation(&self) -> Result<ReadReservation, IscsiError> {
        ReadReservation::decode(&self.pr_in(PrInAction::ReadReservation)?)
            .map_err(IscsiError::Decode)
    }
}
