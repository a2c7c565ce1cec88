//! Queryable state: reads of a running job's keyed state from outside the job (the
//! HTTP endpoint's `/api/jobs/{job}/state/{step}`).
//!
//! Each subtask of a queryable operator ([`Operator::queryable_key`]) gets a bounded
//! channel of reads; its task answers them between two messages, from its own state
//! backend (memory or RocksDB), so a read sees every record that subtask has processed
//! and waits at most for the batch in hand. A read of one key goes to the subtask that
//! owns the key's key group only, computed here the way the hash partitioner routes the
//! key's records; a scan asks every subtask and merges. A full channel answers
//! "unavailable" at once instead of queueing without bound.
//!
//! [`Operator::queryable_key`]: crate::operator::Operator::queryable_key

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::operator::{StateAnswer, StateRead};
use crate::state::{subtask_for_key_group, KeyCodec};

/// Reads waiting per subtask before new ones are refused.
pub const QUEUE: usize = 256;

/// One read sent to a task: the node, the read, where to answer.
pub struct QueryMsg {
    /// The node (a task may run several operators).
    pub node: String,
    /// The read.
    pub read: StateRead,
    /// The answer.
    pub reply: oneshot::Sender<crate::Result<StateAnswer>>,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    /// No such queryable step.
    #[error("{0}")]
    NotFound(String),
    /// The key does not parse as the step's key.
    #[error("{0}")]
    BadKey(String),
    /// The subtask is gone or too busy.
    #[error("{0}")]
    Unavailable(String),
    /// The operator failed the read.
    #[error("{0}")]
    Failed(String),
}

#[derive(Clone)]
struct Node {
    schema: SchemaRef,
    key_columns: Vec<usize>,
    /// Encodes the key columns (built once).
    codec: Option<Arc<KeyCodec>>,
    max_parallelism: u16,
    senders: Vec<Option<mpsc::Sender<QueryMsg>>>,
}

/// The queryable steps of a job and how to reach their subtasks.
#[derive(Default)]
pub struct QueryRegistry {
    nodes: RwLock<HashMap<String, Arc<Node>>>,
}

impl std::fmt::Debug for QueryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryRegistry").finish()
    }
}

impl QueryRegistry {
    /// Registers subtask `subtask` of `node` (of `parallelism`).
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        node: &str,
        schema: SchemaRef,
        key_columns: Vec<usize>,
        max_parallelism: u16,
        parallelism: usize,
        subtask: usize,
        sender: mpsc::Sender<QueryMsg>,
    ) {
        if let Ok(mut nodes) = self.nodes.write() {
            let n = nodes.entry(node.to_string()).or_insert_with(|| {
                // The codec of a one-row batch of the key columns, as `route` builds it.
                let fields: Vec<arrow::datatypes::Field> = key_columns
                    .iter()
                    .map(|&i| schema.field(i).as_ref().clone())
                    .collect();
                let key_schema = Arc::new(arrow::datatypes::Schema::new(fields));
                let idx: Vec<usize> = (0..key_columns.len()).collect();
                Arc::new(Node {
                    codec: KeyCodec::for_columns(&key_schema, &idx).ok().map(Arc::new),
                    schema,
                    key_columns,
                    max_parallelism,
                    senders: vec![None; parallelism.max(1)],
                })
            });
            let n = Arc::make_mut(n);
            if let Some(slot) = n.senders.get_mut(subtask) {
                *slot = Some(sender);
            }
        }
    }

    /// The queryable steps, by name.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .read()
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The key columns of `node`, by name.
    pub fn key_names(&self, node: &str) -> Option<Vec<String>> {
        let nodes = self.nodes.read().ok()?;
        let n = nodes.get(node)?;
        Some(
            n.key_columns
                .iter()
                .map(|&i| n.schema.field(i).name().clone())
                .collect(),
        )
    }

    fn not_found(&self, node: &str) -> QueryError {
        QueryError::NotFound(format!(
            "no queryable step `{node}` (queryable: {})",
            match self.names() {
                n if n.is_empty() => "none".to_string(),
                n => n.join(", "),
            }
        ))
    }

    /// The encoded key, its key group and the sender of the owning subtask.
    fn route(
        &self,
        node: &str,
        key: &[String],
    ) -> Result<(Vec<u8>, u16, mpsc::Sender<QueryMsg>), QueryError> {
        // Held only to clone the node's handle: routing runs outside the lock.
        let found = self
            .nodes
            .read()
            .map_err(|_| QueryError::Unavailable("registry poisoned".into()))?
            .get(node)
            .cloned();
        let Some(n) = found else {
            return Err(self.not_found(node));
        };
        if key.len() != n.key_columns.len() {
            return Err(QueryError::BadKey(format!(
                "`{node}` is keyed by {} column(s) ({}); the key has {} part(s)",
                n.key_columns.len(),
                n.key_columns
                    .iter()
                    .map(|&i| n.schema.field(i).name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                key.len()
            )));
        }
        // One row of the key columns, cast from text to their types.
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (part, &i) in key.iter().zip(&n.key_columns) {
            let f = n.schema.field(i);
            let text: ArrayRef = Arc::new(StringArray::from(vec![part.as_str()]));
            let opts = arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            let typed =
                arrow::compute::cast_with_options(&text, f.data_type(), &opts).map_err(|e| {
                    QueryError::BadKey(format!(
                        "`{part}` is not a {} for key column `{}`: {e}",
                        f.data_type(),
                        f.name()
                    ))
                })?;
            fields.push(arrow::datatypes::Field::new(
                f.name(),
                f.data_type().clone(),
                f.is_nullable(),
            ));
            columns.push(typed);
        }
        let batch = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
            .map_err(|e| QueryError::BadKey(e.to_string()))?;
        let codec = n
            .codec
            .as_ref()
            .ok_or_else(|| QueryError::BadKey(format!("`{node}`'s key cannot be encoded")))?;
        let encoded = codec
            .encode(&batch)
            .map_err(|e| QueryError::BadKey(e.to_string()))?;
        let bytes = encoded.row(0).to_vec();
        let kg = encoded.key_groups(n.max_parallelism)[0];
        let subtask = subtask_for_key_group(kg, n.max_parallelism, n.senders.len());
        let sender = n.senders[subtask].clone().ok_or_else(|| {
            QueryError::Unavailable(format!("subtask {subtask} of `{node}` is not running"))
        })?;
        Ok((bytes, kg, sender))
    }

    /// The value of `key` (one text per key column) in `node`'s state.
    pub async fn get(&self, node: &str, key: &[String]) -> Result<Option<Value>, QueryError> {
        let (bytes, key_group, sender) = self.route(node, key)?;
        match ask(
            &sender,
            node,
            StateRead::Get {
                key: bytes,
                key_group,
            },
        )
        .await?
        {
            StateAnswer::Value(v) => Ok(v),
            StateAnswer::Entries(_) => Err(QueryError::Failed("unexpected answer".into())),
        }
    }

    /// Keys of `node` starting with `prefix`, after `after`, at most `limit`, over every
    /// subtask, in key order.
    pub async fn scan(
        &self,
        node: &str,
        prefix: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, QueryError> {
        let senders: Vec<mpsc::Sender<QueryMsg>> = {
            let found = self
                .nodes
                .read()
                .map_err(|_| QueryError::Unavailable("registry poisoned".into()))?
                .get(node)
                .cloned();
            match found {
                Some(n) => n.senders.iter().flatten().cloned().collect(),
                None => return Err(self.not_found(node)),
            }
        };
        let mut all = Vec::new();
        for s in &senders {
            let read = StateRead::Scan {
                prefix: prefix.clone(),
                after: after.clone(),
                limit,
            };
            if let StateAnswer::Entries(e) = ask(s, node, read).await? {
                all.extend(e);
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.truncate(limit);
        Ok(all)
    }
}

async fn ask(
    sender: &mpsc::Sender<QueryMsg>,
    node: &str,
    read: StateRead,
) -> Result<StateAnswer, QueryError> {
    let (tx, rx) = oneshot::channel();
    sender
        .try_send(QueryMsg {
            node: node.to_string(),
            read,
            reply: tx,
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                QueryError::Unavailable(format!("`{node}` has {QUEUE} reads waiting; try again"))
            }
            mpsc::error::TrySendError::Closed(_) => {
                QueryError::Unavailable(format!("`{node}` is not running"))
            }
        })?;
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Err(_) => Err(QueryError::Unavailable(format!(
            "`{node}` did not answer within 30s"
        ))),
        Ok(Err(_)) => Err(QueryError::Unavailable(format!("`{node}` stopped"))),
        Ok(Ok(r)) => r.map_err(|e| QueryError::Failed(e.to_string())),
    }
}
