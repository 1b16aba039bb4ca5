//! SVG plots of simulation sweeps (plotters' SVG backend: no fonts or system libraries needed).

use std::path::Path;

use plotters::prelude::*;

/// A plot that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlotError {
    /// The SVG file.
    pub path: std::path::PathBuf,
    /// What went wrong (plotters' error, as text: its type is generic over the backend).
    pub message: String,
}

/// One point of a sweep: its label, executions per accepted unit, and wrong results per accepted
/// unit.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Point {
    /// What was varied, for example `replicas 3`.
    pub label: String,
    /// Executions per accepted unit (the cost).
    pub executions_per_unit: f64,
    /// Wrong results accepted per accepted unit (the risk).
    pub wrong_rate: f64,
}

/// Plot wrong-result rate against executions per unit, one labelled point per setting.
pub fn tradeoff(title: &str, points: &[Point], path: &Path) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.into(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let x_max = points
        .iter()
        .map(|p| p.executions_per_unit)
        .fold(1.0, f64::max)
        + 0.5;
    let y_max = points.iter().map(|p| p.wrong_rate).fold(1e-4, f64::max) * 1.25;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.8..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("executions per accepted unit")
        .y_desc("wrong results accepted per unit")
        .y_label_formatter(&|y| format!("{y:.1e}"))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(points.iter().map(|p| {
            EmptyElement::at((p.executions_per_unit, p.wrong_rate))
                + Circle::new((0, 0), 5, BLUE.filled())
                + Text::new(p.label.clone(), (8, -14), ("sans-serif", 14))
        }))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.executions_per_unit, p.wrong_rate)),
            BLUE.mix(0.4),
        ))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// A line through labelled points: `(x, y, label)`.
pub fn line(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    points: &[(f64, f64, String)],
    path: &Path,
) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.into(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (x_min, x_max) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let y_max = points.iter().map(|p| p.1).fold(1e-9, f64::max) * 1.25;
    let pad = ((x_max - x_min) * 0.1).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min - pad)..(x_max + pad), 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.1)),
            BLUE.mix(0.5),
        ))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(points.iter().map(|p| {
            EmptyElement::at((p.0, p.1))
                + Circle::new((0, 0), 4, BLUE.filled())
                + Text::new(p.2.clone(), (6, -16), ("sans-serif", 13))
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
