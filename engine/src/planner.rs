//! The planner: turns a [`LogicalGraph`] into a physical plan of *chains* — runs of
//! nodes joined 1:1 (forward edge, same parallelism, a single consumer) that run in one
//! task per subtask and hand batches over without a channel — and the channel edges
//! between chains. `weir explain` prints it.

use std::fmt::Write as _;

use crate::graph::{LogicalGraph, NodeId, NodeKind};
use crate::registry::Partitioning;

/// A run of nodes executed in one task per subtask.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Nodes, head first.
    pub nodes: Vec<NodeId>,
    /// Number of subtasks (equal for every node of the chain).
    pub parallelism: usize,
}

/// The physical plan.
#[derive(Debug, Clone)]
pub struct PhysicalPlan {
    /// Chains in topological order.
    pub chains: Vec<Chain>,
    /// For each node, `(chain index, position in the chain)`.
    pub placement: Vec<(usize, usize)>,
    /// Indexes into `graph.edges` of the edges that cross chains (become channels).
    pub channel_edges: Vec<usize>,
}

impl PhysicalPlan {
    /// Plans `graph`.
    pub fn new(graph: &LogicalGraph) -> Self {
        let n = graph.nodes.len();
        // Node `b` joins the chain of `a` when the only edge into `b` is `a`'s main
        // output, forward, with the same parallelism, and `a`'s main output feeds only `b`.
        let mut chained_into: Vec<Option<NodeId>> = vec![None; n];
        for (b, node) in graph.nodes.iter().enumerate() {
            let ins = graph.inputs_of(b);
            if ins.len() != 1 {
                continue;
            }
            let e = ins[0];
            let a = e.from.node;
            if e.from.side.is_some()
                || e.partitioning != Partitioning::Forward
                || graph.nodes[a].parallelism != node.parallelism
                || matches!(graph.nodes[a].kind, NodeKind::Sink(_))
            {
                continue;
            }
            let consumers = graph
                .edges
                .iter()
                .filter(|x| x.from.node == a && x.from.side.is_none())
                .count();
            if consumers == 1 {
                chained_into[b] = Some(a);
            }
        }
        let mut placement = vec![(usize::MAX, 0); n];
        let mut chains: Vec<Chain> = Vec::new();
        // Nodes are in topological order, so a chain's head is placed before its members.
        for b in 0..n {
            match chained_into[b] {
                Some(a) => {
                    let (c, pos) = placement[a];
                    chains[c].nodes.push(b);
                    placement[b] = (c, pos + 1);
                }
                None => {
                    placement[b] = (chains.len(), 0);
                    chains.push(Chain {
                        nodes: vec![b],
                        parallelism: graph.nodes[b].parallelism,
                    });
                }
            }
        }
        let channel_edges = graph
            .edges
            .iter()
            .enumerate()
            .filter(|(_, e)| chained_into[e.to] != Some(e.from.node) || e.from.side.is_some())
            .map(|(i, _)| i)
            .collect();
        PhysicalPlan {
            chains,
            placement,
            channel_edges,
        }
    }

    /// A readable description: chains with their nodes and the edges between them.
    pub fn explain(&self, graph: &LogicalGraph) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "job {} — {} node(s) in {} chain(s), {} task(s); max parallelism {}",
            graph.job,
            graph.nodes.len(),
            self.chains.len(),
            self.chains.iter().map(|c| c.parallelism).sum::<usize>(),
            graph.settings.max_parallelism
        );
        for (ci, chain) in self.chains.iter().enumerate() {
            let _ = writeln!(s, "\nchain {ci} [parallelism {}]", chain.parallelism);
            for (k, &id) in chain.nodes.iter().enumerate() {
                let node = &graph.nodes[id];
                let arrow = if k == 0 { "  " } else { "  └─ " };
                let _ = writeln!(
                    s,
                    "{arrow}{} {}: {}",
                    node.kind_name(),
                    node.name,
                    node.describe()
                );
                let fields: Vec<String> = node
                    .schema
                    .fields()
                    .iter()
                    .map(|f| {
                        format!(
                            "{}: {}{}",
                            f.name(),
                            f.data_type(),
                            if f.is_nullable() { "?" } else { "" }
                        )
                    })
                    .collect();
                let pad = if k == 0 { "    " } else { "       " };
                let _ = writeln!(s, "{pad}schema {{{}}}", fields.join(", "));
            }
        }
        if !self.channel_edges.is_empty() {
            let _ = writeln!(s, "\nedges");
            for &ei in &self.channel_edges {
                let e = &graph.edges[ei];
                let from = &graph.nodes[e.from.node];
                let to = &graph.nodes[e.to];
                let side = e
                    .from
                    .side
                    .as_ref()
                    .map(|x| format!(".{x}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {}{side} [{}] --{}--> {} [{}] input {}",
                    from.name, from.parallelism, e.partitioning, to.name, to.parallelism, e.input
                );
            }
        }
        s
    }
}
