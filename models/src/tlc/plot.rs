//! The report's SVG plots, drawn with plotters (SVG backend, no font rendering: text is left to
//! the browser).

use super::driver::CompressState;
use crate::error::{Error, Result};
use plotters::prelude::*;

fn plot_err(e: impl std::fmt::Debug) -> Error {
    Error::Config(format!("cannot draw the report's plot: {e:?}"))
}

/// A named, coloured line of points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Accuracy (%) against activations removed: validation, test, training subset, and validation
/// right after each removal (before fine-tuning).
pub fn accuracy_svg(state: &CompressState) -> Result<String> {
    let its = &state.iterations;
    let pct = |v: f64| v * 100.0;
    let series: Vec<Series> = vec![
        (
            "validation",
            RGBColor(31, 119, 180),
            its.iter()
                .map(|r| (r.removed_total as f64, pct(r.val_acc)))
                .collect(),
        ),
        (
            "test",
            RGBColor(214, 39, 40),
            its.iter()
                .filter_map(|r| Some((r.removed_total as f64, pct(r.test_acc?))))
                .collect(),
        ),
        (
            "train (subset, eval mode)",
            RGBColor(44, 160, 44),
            its.iter()
                .filter_map(|r| Some((r.removed_total as f64, pct(r.train_acc?))))
                .collect(),
        ),
        (
            "validation before fine-tuning",
            RGBColor(150, 150, 150),
            its.iter()
                .filter_map(|r| Some((r.removed_total as f64, pct(r.val_acc_before_ft?))))
                .collect(),
        ),
    ];
    let xmax = its
        .iter()
        .map(|r| r.removed_total)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let lo = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(100.0f64, f64::min);
    let ymin = ((lo - 2.0).max(0.0) / 5.0).floor() * 5.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "TLC: accuracy against activations removed",
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.25f64..xmax + 0.25, ymin..100.0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("activations removed")
            .y_desc("accuracy (%)")
            .x_labels((xmax as usize + 1).min(40))
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{:.0}", x)
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(plot_err)?;
        for (name, color, pts) in series {
            if pts.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Entropy (bits) of every candidate layer of the starting model (down the y axis), one line per
/// iteration (the scores each iteration ranked by; a cross marks the layers it removed, which drop
/// out of later lines).
pub fn entropy_svg(state: &CompressState) -> Result<String> {
    let ranked: Vec<_> = state
        .iterations
        .iter()
        .filter_map(|r| r.ranking.as_ref().map(|k| (r.iteration, k)))
        .collect();
    let layers: Vec<String> = ranked
        .first()
        .map(|(_, k)| k.entries.iter().map(|e| e.row.act.clone()).collect())
        .unwrap_or_default();
    let n = layers.len().max(1) as i32;
    // Layers down the y axis, first at the top, so their names read horizontally.
    let y_of = |act: &str| -> Option<i32> {
        layers
            .iter()
            .position(|l| l == act)
            .map(|i| n - 1 - i as i32)
    };
    let height = (200 + 24 * layers.len()).clamp(420, 2400) as u32;
    // Zoom onto the values (entropies of a short training run all sit near 1 bit).
    let min_h = ranked
        .iter()
        .flat_map(|(_, k)| k.entries.iter().filter_map(|e| e.row.entropy))
        .fold(1.0f32, f32::min) as f64;
    let lo = (((min_h - 0.02) * 50.0).floor() / 50.0).clamp(0.0, 0.9);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let name_w = layers.iter().map(|l| l.len()).max().unwrap_or(4);
        let mut chart = ChartBuilder::on(&root)
            .caption("TLC: layer entropy per iteration", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size((name_w * 8 + 20) as u32)
            .build_cartesian_2d(lo..1.0 + (1.0 - lo) * 0.04, -1i32..n)
            .map_err(plot_err)?;
        let names = layers.clone();
        chart
            .configure_mesh()
            .x_desc("entropy (bits; 0 = already linear)")
            .y_labels(n as usize + 2)
            .y_label_formatter(&|&i| {
                usize::try_from(n - 1 - i)
                    .ok()
                    .and_then(|i| names.get(i).cloned())
                    .unwrap_or_default()
            })
            .draw()
            .map_err(plot_err)?;
        for (k, (it, rk)) in ranked.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let pts: Vec<(f64, i32)> = rk
                .entries
                .iter()
                .filter_map(|e| Some((e.row.entropy? as f64, y_of(&e.row.act)?)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(format!("iteration {it}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(plot_err)?;
            // The layers this iteration removed.
            let gone: Vec<(f64, i32)> = rk
                .entries
                .iter()
                .filter(|e| e.removed)
                .filter_map(|e| Some((e.row.entropy? as f64, y_of(&e.row.act)?)))
                .collect();
            chart
                .draw_series(
                    gone.iter()
                        .map(|&p| Cross::new(p, 7, color.stroke_width(2))),
                )
                .map_err(plot_err)?;
        }
        if !ranked.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}
