//! The fraction of generated tokens leaving at each decoder layer, per exit policy, as an
//! SVG bar chart (the paper's Figure 2): one group of bars per policy, one bar per layer.

use std::fmt::Write;

/// Renders `rows` (policy name, fraction of tokens per exit layer 1..=L) as an SVG document.
pub fn exit_svg(title: &str, rows: &[(String, Vec<f64>)]) -> String {
    let layers = rows.iter().map(|(_, f)| f.len()).max().unwrap_or(0).max(1);
    let (bar_w, gap, left, top, plot_h) = (14.0, 18.0, 56.0, 40.0, 220.0);
    let group_w = layers as f64 * bar_w + gap;
    let width = left + rows.len().max(1) as f64 * group_w + 140.0;
    let height = top + plot_h + 90.0;
    let colours = [
        "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
        "#ccb974", "#64b5cd", "#1f77b4", "#2ca02c",
    ];
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="13">{}</text>"#,
        escape(title)
    );
    // Axis with ticks at 0, 25, 50, 75, 100 %.
    for k in 0..=4 {
        let y = top + plot_h * (1.0 - k as f64 / 4.0);
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}%</text>"##,
            width - 140.0,
            left - 6.0,
            y + 4.0,
            k * 25
        );
    }
    for (g, (name, fr)) in rows.iter().enumerate() {
        let x0 = left + g as f64 * group_w + gap / 2.0;
        for (l, f) in fr.iter().enumerate() {
            let h = plot_h * f.clamp(0.0, 1.0);
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{bar_w}" height="{h:.1}" fill="{}"><title>{} layer {}: {:.1}%</title></rect>"#,
                x0 + l as f64 * bar_w,
                top + plot_h - h,
                colours[l % colours.len()],
                escape(name),
                l + 1,
                100.0 * f
            );
        }
        let cx = x0 + layers as f64 * bar_w / 2.0;
        let _ = write!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="end" transform="rotate(-40 {cx:.1} {:.1})">{}</text>"#,
            top + plot_h + 14.0,
            top + plot_h + 14.0,
            escape(name)
        );
    }
    let lx = width - 120.0;
    for l in 0..layers {
        let y = top + 10.0 + 16.0 * l as f64;
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">exit layer {}</text>"#,
            y - 9.0,
            colours[l % colours.len()],
            lx + 14.0,
            y,
            l + 1
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_policy_and_layer_with_heights_in_proportion() {
        let svg = exit_svg(
            "exits <test>",
            &[
                ("last".into(), vec![0.0, 0.0, 1.0]),
                ("hard:0.5".into(), vec![0.5, 0.25, 0.25]),
            ],
        );
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("exits &lt;test&gt;"));
        assert_eq!(svg.matches("<title>").count(), 6);
        assert!(svg.contains("hard:0.5 layer 1: 50.0%"));
        assert!(
            svg.contains(r#"height="220.0""#),
            "a full bar is the plot height"
        );
        assert!(
            svg.contains(r#"height="110.0""#),
            "half a bar is half of it"
        );
    }
}
