//! The topology drawn as SVG, laid out by `layout-rs` (no Graphviz needed).

use std::collections::BTreeMap;

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;

use crate::graph::{NodeKind, Topology};

/// What a drawn box stands for; sets its colour.
#[derive(Clone, Copy)]
enum Kind {
    Topic,
    Processor,
    Store,
}

fn look(kind: Kind) -> StyleAttr {
    let fill = match kind {
        Kind::Topic => "#fdf1d6",
        Kind::Processor => "#dbe9fb",
        Kind::Store => "#def3df",
    };
    StyleAttr::new(Color::fast("#333333"), 1, Color::from_name(fill), 6, 13)
}

/// Renders `topology` (topics, processors, stores, changelogs) as SVG.
///
/// Returns `None` if the layout engine fails, which callers report as
/// "no diagram" rather than failing the page.
pub fn topology_svg(topology: &Topology, application_id: &str) -> Option<String> {
    // The layout library asserts on shapes it cannot place; a diagram is
    // not worth a crashed server.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        render(topology, application_id)
    }))
    .ok()
}

fn render(topology: &Topology, app: &str) -> String {
    let mut vg = VisualGraph::new(Orientation::TopToBottom);
    let mut handles = BTreeMap::new();
    let mut add = |vg: &mut VisualGraph, label: &str, kind: Kind| {
        *handles.entry(label.to_string()).or_insert_with(|| {
            let width = 16.0 + 7.5 * label.chars().count() as f64;
            let el = Element::create(
                ShapeKind::new_box(label),
                look(kind),
                Orientation::LeftToRight,
                Point::new(width, 36.0),
            );
            vg.add_node(el)
        })
    };
    let nodes = topology.nodes();
    let mut ids = Vec::with_capacity(nodes.len());
    for i in 0..nodes.len() {
        ids.push(add(&mut vg, &topology.label(i), Kind::Processor));
    }
    for (i, n) in nodes.iter().enumerate() {
        for &c in &n.children {
            vg.add_edge(Arrow::simple(""), ids[i], ids[c]);
        }
        match &n.kind {
            NodeKind::Source { topics, .. } => {
                for t in topics {
                    let h = add(&mut vg, &format!("topic {}", t.resolve(app)), Kind::Topic);
                    vg.add_edge(Arrow::simple(""), h, ids[i]);
                }
            }
            NodeKind::Sink { topic, .. } => {
                let h = add(
                    &mut vg,
                    &format!("topic {}", topic.resolve(app)),
                    Kind::Topic,
                );
                vg.add_edge(Arrow::simple(""), ids[i], h);
            }
            NodeKind::Processor { stores, .. } => {
                for s in stores {
                    let h = add(&mut vg, &format!("store {s}"), Kind::Store);
                    vg.add_edge(Arrow::simple(""), ids[i], h);
                    if let Some(cl) = topology.store(s).and_then(|spec| spec.changelog_topic(app)) {
                        let c = add(&mut vg, &format!("changelog {cl}"), Kind::Topic);
                        vg.add_edge(Arrow::simple(""), h, c);
                    }
                }
            }
        }
    }
    let mut svg = SVGWriter::new();
    vg.do_it(false, false, false, &mut svg);
    svg.finalize()
}
