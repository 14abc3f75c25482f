//! Rendering a [`Topology`]: the text description, Mermaid and DOT.

use std::fmt::Write as _;

use super::*;

impl Topology {
    /// Text description: sub-topologies, sources, processors, stores with
    /// their changelogs, sinks and internal topics.
    pub fn describe(&self, application_id: &str) -> String {
        let mut out = String::from("Topologies:\n");
        for st in &self.subtopologies {
            let _ = writeln!(out, "  Sub-topology: {}", st.id);
            for &i in &st.nodes {
                let n = &self.nodes[i];
                let children: Vec<&str> = n
                    .children
                    .iter()
                    .map(|&c| self.nodes[c].name.as_str())
                    .collect();
                let line = match &n.kind {
                    NodeKind::Source { topics, .. } => {
                        let t: Vec<String> =
                            topics.iter().map(|t| t.resolve(application_id)).collect();
                        format!("Source: {} (topics: [{}])", n.name, t.join(", "))
                    }
                    NodeKind::Processor { stores, .. } => {
                        format!(
                            "Processor: {} (stores: [{}])",
                            self.label(i),
                            stores.join(", ")
                        )
                    }
                    NodeKind::Sink { topic, .. } => {
                        format!(
                            "Sink: {} (topic: {})",
                            n.name,
                            topic.resolve(application_id)
                        )
                    }
                };
                let _ = writeln!(out, "    {line}");
                if !children.is_empty() {
                    let _ = writeln!(out, "      --> {}", children.join(", "));
                }
            }
        }
        if !self.stores.is_empty() {
            out.push_str("Stores:\n");
            for s in &self.stores {
                let cl = s
                    .changelog_topic(application_id)
                    .unwrap_or_else(|| "none".into());
                let _ = writeln!(out, "  {} (changelog: {cl})", s.name);
            }
        }
        if !self.globals.is_empty() {
            out.push_str("Global tables:\n");
            for g in &self.globals {
                let _ = writeln!(
                    out,
                    "  {} (topic: {}, every partition on every instance)",
                    g.store, g.topic
                );
            }
        }
        if !self.repartitions.is_empty() {
            out.push_str("Internal topics:\n");
            for (suffix, p) in &self.repartitions {
                let parts = p
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "upstream's".into());
                let _ = writeln!(
                    out,
                    "  {} (repartition, partitions: {parts})",
                    internal_topic_name(application_id, suffix)
                );
            }
        }
        out
    }

    /// The graph as a Mermaid flowchart.
    pub fn to_mermaid(&self, application_id: &str) -> String {
        let mut out = String::from("flowchart TD\n");
        let topic_id = |t: &str| format!("t_{}", sanitize(t));
        let mut topics = BTreeSet::new();
        for st in &self.subtopologies {
            let _ = writeln!(out, "  subgraph sub{}[\"Sub-topology {}\"]", st.id, st.id);
            for &i in &st.nodes {
                let _ = writeln!(out, "    n{i}[\"{}\"]", self.label(i));
            }
            out.push_str("  end\n");
        }
        for (i, n) in self.nodes.iter().enumerate() {
            for &c in &n.children {
                let _ = writeln!(out, "  n{i} --> n{c}");
            }
            match &n.kind {
                NodeKind::Source { topics: ts, .. } => {
                    for t in ts {
                        let name = t.resolve(application_id);
                        topics.insert(name.clone());
                        let _ = writeln!(out, "  {} --> n{i}", topic_id(&name));
                    }
                }
                NodeKind::Sink { topic, .. } => {
                    let name = topic.resolve(application_id);
                    topics.insert(name.clone());
                    let _ = writeln!(out, "  n{i} --> {}", topic_id(&name));
                }
                NodeKind::Processor { stores, .. } => {
                    for s in stores {
                        let _ = writeln!(out, "  n{i} -.- s_{}[(\"{s}\")]", sanitize(s));
                        if let Some(cl) = self
                            .store(s)
                            .and_then(|spec| spec.changelog_topic(application_id))
                        {
                            topics.insert(cl.clone());
                            let _ = writeln!(out, "  s_{} -.-> {}", sanitize(s), topic_id(&cl));
                        }
                    }
                }
            }
        }
        for t in topics {
            let _ = writeln!(out, "  {}[/\"{t}\"/]", topic_id(&t));
        }
        out
    }

    /// The graph in Graphviz DOT.
    pub fn to_dot(&self, application_id: &str) -> String {
        let mut out =
            String::from("digraph topology {\n  rankdir=TB;\n  node [fontname=\"Helvetica\"];\n");
        for st in &self.subtopologies {
            let _ = writeln!(
                out,
                "  subgraph cluster_{} {{\n    label=\"Sub-topology {}\";",
                st.id, st.id
            );
            for &i in &st.nodes {
                let _ = writeln!(out, "    n{i} [label=\"{}\", shape=box];", self.label(i));
            }
            out.push_str("  }\n");
        }
        for (i, n) in self.nodes.iter().enumerate() {
            for &c in &n.children {
                let _ = writeln!(out, "  n{i} -> n{c};");
            }
            match &n.kind {
                NodeKind::Source { topics, .. } => {
                    for t in topics {
                        let _ = writeln!(
                            out,
                            "  \"{}\" [shape=parallelogram];\n  \"{}\" -> n{i};",
                            t.resolve(application_id),
                            t.resolve(application_id)
                        );
                    }
                }
                NodeKind::Sink { topic, .. } => {
                    let t = topic.resolve(application_id);
                    let _ = writeln!(out, "  \"{t}\" [shape=parallelogram];\n  n{i} -> \"{t}\";");
                }
                NodeKind::Processor { stores, .. } => {
                    for s in stores {
                        let _ = writeln!(out, "  \"store:{s}\" [shape=cylinder];\n  n{i} -> \"store:{s}\" [style=dashed, dir=both];");
                        if let Some(cl) = self
                            .store(s)
                            .and_then(|spec| spec.changelog_topic(application_id))
                        {
                            let _ = writeln!(out, "  \"{cl}\" [shape=parallelogram];\n  \"store:{s}\" -> \"{cl}\" [style=dotted];");
                        }
                    }
                }
            }
        }
        out.push_str("}\n");
        out
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
