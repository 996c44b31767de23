//! The exec room's table bundle: circuit breaker states, workflow step checkpoints and the
//! process groups of running commands, opened
//! together inside one transaction ([`Tables`] for writes, [`ReadTables`] for reads) with the
//! reads both share through [`ReadableTables`]. This is the only code of the room that names
//! `tables::exec::…`.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, TableError, TableHandle, WriteTransaction};
use uuid::Uuid;

use super::model::{CircuitRecord, RunningCommand, StepCheckpoint};
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::exec::{CIRCUITS, RUNNING_COMMANDS, WORKFLOW_STEPS};

/// The exec room's tables, readable in a read or a write transaction.
pub(super) trait ReadableTables {
    /// Circuit states by target name.
    fn circuits(&self) -> &impl ReadableTable<&'static str, &'static [u8]>;
    /// Workflow step checkpoints by (task id, step index).
    fn workflow_steps(&self) -> &impl ReadableTable<(u128, u32), &'static [u8]>;
    /// Process groups of running commands by task id.
    fn running_commands(&self) -> &impl ReadableTable<u128, &'static [u8]>;

    /// The recorded running command of task `task`.
    fn running_command(&self, task: Uuid) -> Result<Option<RunningCommand>, StoreError> {
        match self.running_commands().get(task.as_u128())? {
            Some(v) => Ok(Some(codec::decode(
                RUNNING_COMMANDS.name(),
                task,
                v.value(),
            )?)),
            None => Ok(None),
        }
    }

    /// Every recorded running command, by task id.
    fn running_command_records(&self) -> Result<Vec<(Uuid, RunningCommand)>, StoreError> {
        let mut out = Vec::new();
        for row in self.running_commands().iter()? {
            let (k, v) = row?;
            let id = Uuid::from_u128(k.value());
            out.push((id, codec::decode(RUNNING_COMMANDS.name(), id, v.value())?));
        }
        Ok(out)
    }

    /// Every persisted circuit state, by target name.
    fn circuit_records(&self) -> Result<Vec<(String, CircuitRecord)>, StoreError> {
        let mut out = Vec::new();
        for row in self.circuits().iter()? {
            let (k, v) = row?;
            let name = k.value().to_string();
            let record = codec::decode(CIRCUITS.name(), &name, v.value())?;
            out.push((name, record));
        }
        Ok(out)
    }

    /// The checkpointed steps of a workflow task, by step index.
    fn step_checkpoints(&self, task: Uuid) -> Result<BTreeMap<u32, StepCheckpoint>, StoreError> {
        let mut out = BTreeMap::new();
        for row in self
            .workflow_steps()
            .range((task.as_u128(), 0)..=(task.as_u128(), u32::MAX))?
        {
            let (k, v) = row?;
            let index = k.value().1;
            let record =
                codec::decode(WORKFLOW_STEPS.name(), format!("{task}/{index}"), v.value())?;
            out.insert(index, record);
        }
        Ok(out)
    }
}

/// The exec room's tables opened for writing in one transaction.
pub(super) struct Tables<'tx> {
    circuits: redb::Table<'tx, &'static str, &'static [u8]>,
    workflow_steps: redb::Table<'tx, (u128, u32), &'static [u8]>,
    running_commands: redb::Table<'tx, u128, &'static [u8]>,
}

impl<'tx> Tables<'tx> {
    /// Opens every exec table in `tx`.
    pub(super) fn open(tx: &'tx WriteTransaction) -> Result<Self, TableError> {
        Ok(Tables {
            circuits: tx.open_table(CIRCUITS)?,
            workflow_steps: tx.open_table(WORKFLOW_STEPS)?,
            running_commands: tx.open_table(RUNNING_COMMANDS)?,
        })
    }

    /// Stores a circuit's state.
    pub(super) fn put_circuit(
        &mut self,
        name: &str,
        record: &CircuitRecord,
    ) -> Result<(), StoreError> {
        self.circuits
            .insert(name, codec::encode(record).as_slice())?;
        Ok(())
    }

    /// Stores the checkpoint of step `index` of workflow task `task`.
    pub(super) fn put_checkpoint(
        &mut self,
        task: Uuid,
        index: u32,
        checkpoint: &StepCheckpoint,
    ) -> Result<(), StoreError> {
        self.workflow_steps.insert(
            (task.as_u128(), index),
            codec::encode(checkpoint).as_slice(),
        )?;
        Ok(())
    }

    /// Records (or refreshes) the running command of task `task`.
    pub(super) fn put_running_command(
        &mut self,
        task: Uuid,
        record: &RunningCommand,
    ) -> Result<(), StoreError> {
        self.running_commands
            .insert(task.as_u128(), codec::encode(record).as_slice())?;
        Ok(())
    }

    /// Forgets the running command of task `task`.
    pub(super) fn remove_running_command(&mut self, task: Uuid) -> Result<(), StoreError> {
        self.running_commands.remove(task.as_u128())?;
        Ok(())
    }

    /// Deletes every step checkpoint of the tasks `ids`.
    pub(super) fn remove_checkpoints(&mut self, ids: &[Uuid]) -> Result<(), StoreError> {
        for id in ids {
            let keys: Vec<(u128, u32)> = self
                .workflow_steps
                .range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for key in keys {
                self.workflow_steps.remove(key)?;
            }
        }
        Ok(())
    }
}

impl ReadableTables for Tables<'_> {
    fn circuits(&self) -> &impl ReadableTable<&'static str, &'static [u8]> {
        &self.circuits
    }
    fn workflow_steps(&self) -> &impl ReadableTable<(u128, u32), &'static [u8]> {
        &self.workflow_steps
    }
    fn running_commands(&self) -> &impl ReadableTable<u128, &'static [u8]> {
        &self.running_commands
    }
}

/// The exec room's tables opened for reading in one transaction.
pub(super) struct ReadTables {
    circuits: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    workflow_steps: redb::ReadOnlyTable<(u128, u32), &'static [u8]>,
    running_commands: redb::ReadOnlyTable<u128, &'static [u8]>,
}

impl ReadTables {
    /// Opens every exec table in `tx`.
    pub(super) fn open(tx: &ReadTransaction) -> Result<Self, TableError> {
        Ok(ReadTables {
            circuits: tx.open_table(CIRCUITS)?,
            workflow_steps: tx.open_table(WORKFLOW_STEPS)?,
            running_commands: tx.open_table(RUNNING_COMMANDS)?,
        })
    }
}

impl ReadableTables for ReadTables {
    fn circuits(&self) -> &impl ReadableTable<&'static str, &'static [u8]> {
        &self.circuits
    }
    fn workflow_steps(&self) -> &impl ReadableTable<(u128, u32), &'static [u8]> {
        &self.workflow_steps
    }
    fn running_commands(&self) -> &impl ReadableTable<u128, &'static [u8]> {
        &self.running_commands
    }
}
