//! Medians, ratios and the three result files: JSON (everything), Markdown
//! (the table with slo-hub / best peer ratios) and SVG (one bar chart per figure).

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Rep;

#[derive(Serialize)]
pub struct ServerResult {
    pub name: String,
    pub label: String,
    pub median: Rep,
    pub reps: Vec<Rep>,
}

impl ServerResult {
    pub fn new(name: &str, label: &str, reps: Vec<Rep>) -> ServerResult {
        let med = |f: fn(&Rep) -> f64| median(reps.iter().map(f).collect());
        let med_opt = |f: fn(&Rep) -> Option<f64>| {
            let v: Vec<f64> = reps.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let median = Rep {
            kib_per_socket: med(|r| r.kib_per_socket),
            connects_per_s: med(|r| r.connects_per_s),
            lat_p50_us: med(|r| r.lat_p50_us),
            lat_p99_us: med(|r| r.lat_p99_us),
            sat_triggers_per_s: med(|r| r.sat_triggers_per_s),
            sat_p99_ms: med(|r| r.sat_p99_ms),
            sat_cpu_us_per_trigger: med(|r| r.sat_cpu_us_per_trigger),
            sat_server_busy_pct: med(|r| r.sat_server_busy_pct),
            sat_generator_busy_pct: med(|r| r.sat_generator_busy_pct),
            sat_first_round_cpu_us: med(|r| r.sat_first_round_cpu_us),
            sat_later_rounds_cpu_us: med(|r| r.sat_later_rounds_cpu_us),
            bcast_cpu_us_per_delivery: med(|r| r.bcast_cpu_us_per_delivery),
            bcast_cpu_settled_us_per_delivery: med(|r| r.bcast_cpu_settled_us_per_delivery),
            bcast_ms: med(|r| r.bcast_ms),
            hs256_triggers_per_s: med_opt(|r| r.hs256_triggers_per_s),
            rs256_triggers_per_s: med_opt(|r| r.rs256_triggers_per_s),
            hs256_cpu_us_per_trigger: med_opt(|r| r.hs256_cpu_us_per_trigger),
            rs256_cpu_us_per_trigger: med_opt(|r| r.rs256_cpu_us_per_trigger),
            connect_cpu_us_per_socket: med(|r| r.connect_cpu_us_per_socket),
            connect_server_busy_pct: med(|r| r.connect_server_busy_pct),
            connect_generator_busy_pct: med(|r| r.connect_generator_busy_pct),
            missed: reps.iter().map(|r| r.missed).sum(),
            connect_failures: reps.iter().map(|r| r.connect_failures).sum(),
        };
        ServerResult {
            name: name.into(),
            label: label.into(),
            median,
            reps,
        }
    }
}

/// The saturated phase's first round against the later ones, if any.
fn rounds(r: &Rep) -> String {
    if r.sat_later_rounds_cpu_us.is_nan() {
        return String::new();
    }
    format!(
        ", server CPU per trigger {:.1} µs in the first round and {:.1} µs in the later ones",
        r.sat_first_round_cpu_us, r.sat_later_rounds_cpu_us
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One column of the table: how to read it from a result and which way is better.
struct Figure {
    title: &'static str,
    get: fn(&Rep) -> f64,
    lower_is_better: bool,
    digits: usize,
}

const FIGURES: &[Figure] = &[
    Figure {
        title: "KiB per idle socket",
        get: |r| r.kib_per_socket,
        lower_is_better: true,
        digits: 2,
    },
    Figure {
        title: "latency p50 (µs)",
        get: |r| r.lat_p50_us,
        lower_is_better: true,
        digits: 0,
    },
    Figure {
        title: "latency p99 (µs)",
        get: |r| r.lat_p99_us,
        lower_is_better: true,
        digits: 0,
    },
    Figure {
        title: "triggers/s, 64 in flight",
        get: |r| r.sat_triggers_per_s,
        lower_is_better: false,
        digits: 0,
    },
    Figure {
        title: "p99 at 64 in flight (ms)",
        get: |r| r.sat_p99_ms,
        lower_is_better: true,
        digits: 2,
    },
    Figure {
        title: "server CPU µs per trigger, 64 in flight",
        get: |r| r.sat_cpu_us_per_trigger,
        lower_is_better: true,
        digits: 1,
    },
    Figure {
        title: "CPU µs per delivery (broadcast)",
        get: |r| r.bcast_cpu_us_per_delivery,
        lower_is_better: true,
        digits: 2,
    },
    Figure {
        title: "connect+subscribe/s",
        get: |r| r.connects_per_s,
        lower_is_better: false,
        digits: 0,
    },
];

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "cpu": model,
        // The machine's CPUs, not this process's: bench/run.sh pins the load
        // generator to one, and `available_parallelism` counts only those.
        "cpus": cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
        "kernel": kernel.trim(),
    })
}

pub fn write(out: &Path, results: &[ServerResult], command: &str) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let stamp = chrono_like_stamp();
    let base = out.join(&stamp);
    let json = serde_json::json!({
        "date": stamp,
        "command": command,
        "machine": machine(),
        "servers": results,
    });
    let json_path = base.with_extension("json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&json).unwrap())?;
    let md_path = base.with_extension("md");
    std::fs::write(&md_path, markdown(results, command, &json["machine"]))?;
    let svg_path = base.with_extension("svg");
    std::fs::write(&svg_path, svg(results))?;
    Ok(vec![json_path, md_path, svg_path])
}

/// `YYYY-MM-DDTHH-MM-SSZ` from the system clock (no date crate needed).
pub fn chrono_like_stamp() -> String {
    let secs = slo_hub::util::now_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn fmt(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.digits$}")
    }
}

fn markdown(results: &[ServerResult], command: &str, machine: &serde_json::Value) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# slo-bench results\n");
    let _ = writeln!(
        s,
        "Machine: {} ({} CPUs), Linux {}. Servers pinned to one core, load generator to another. Medians of the repetitions.\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["kernel"].as_str().unwrap_or("?")
    );
    let _ = writeln!(s, "Command: `{command}`\n");
    let _ = write!(s, "| server |");
    for f in FIGURES {
        let _ = write!(s, " {} |", f.title);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "|---|{}", "---|".repeat(FIGURES.len()));
    for r in results {
        let _ = write!(s, "| {} |", r.label);
        for f in FIGURES {
            let _ = write!(s, " {} |", fmt((f.get)(&r.median), f.digits));
        }
        let _ = writeln!(s);
    }
    let hubs: Vec<&ServerResult> = results.iter().filter(|r| r.name == "slo-hub").collect();
    // slo-hub on the Pusher protocol is slo-hub, not a peer.
    let peers: Vec<&ServerResult> = results
        .iter()
        .filter(|r| !r.name.starts_with("slo-hub"))
        .collect();
    if let (Some(hub), false) = (hubs.first(), peers.is_empty()) {
        let _ = write!(s, "| **slo-hub / best peer** |");
        for f in FIGURES {
            let best = peers
                .iter()
                .map(|p| (f.get)(&p.median))
                .filter(|v| !v.is_nan())
                .fold(None, |acc: Option<f64>, v| {
                    Some(match acc {
                        None => v,
                        Some(a) if f.lower_is_better => a.min(v),
                        Some(a) => a.max(v),
                    })
                });
            let cell = match best {
                Some(b) if b != 0.0 => {
                    let ratio = (f.get)(&hub.median) / b;
                    let better = if f.lower_is_better {
                        ratio <= 1.0
                    } else {
                        ratio >= 1.0
                    };
                    format!("{ratio:.2}× {}", if better { "✓" } else { "✗" })
                }
                _ => "–".into(),
            };
            let _ = write!(s, " {cell} |");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "\nRatios: below 1 is better for memory, latency and CPU; above 1 for rates. ✓ marks where slo-hub beats the best peer."
        );
    }
    for hub in hubs {
        let m = &hub.median;
        if let (Some(hs), Some(rs), Some(hs_cpu), Some(rs_cpu)) = (
            m.hs256_triggers_per_s,
            m.rs256_triggers_per_s,
            m.hs256_cpu_us_per_trigger,
            m.rs256_cpu_us_per_trigger,
        ) {
            let _ = writeln!(
                s,
                "\n{}: triggers authenticated with the users' own tokens (64 in flight, no sockets): HS256 {hs:.0}/s ({hs_cpu:.1} µs server CPU each: {:.0}/s per core), RS256 {rs:.0}/s ({rs_cpu:.1} µs: {:.0}/s per core).",
                hub.label,
                1e6 / hs_cpu,
                1e6 / rs_cpu
            );
        }
    }
    for r in results {
        let _ = writeln!(
            s,
            "\n{}: 64 triggers in flight: server core {:.0} % busy, load generator core {:.0} % busy{}; connecting: server core {:.0} % busy ({:.1} µs per socket), load generator core {:.0} % busy.",
            r.label,
            r.median.sat_server_busy_pct,
            r.median.sat_generator_busy_pct,
            rounds(&r.median),
            r.median.connect_server_busy_pct,
            r.median.connect_cpu_us_per_socket,
            r.median.connect_generator_busy_pct
        );
    }
    let missed: u64 = results
        .iter()
        .map(|r| r.median.missed + r.median.connect_failures)
        .sum();
    let _ = writeln!(
        s,
        "\nMissed deliveries and failed connects over all repetitions: {missed}."
    );
    s
}

fn svg(results: &[ServerResult]) -> String {
    let panel_w = 380.0;
    let bar_h = 18.0;
    let panel_h = 40.0 + bar_h * results.len() as f64 + 10.0;
    let cols = 2usize;
    let rows = FIGURES.len().div_ceil(cols);
    let width = panel_w * cols as f64 + 20.0;
    let height = panel_h * rows as f64 + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, f) in FIGURES.iter().enumerate() {
        let x0 = 10.0 + (i % cols) as f64 * panel_w;
        let y0 = 10.0 + (i / cols) as f64 * panel_h;
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{}" font-weight="bold">{} ({} is better)</text>"#,
            y0 + 14.0,
            f.title,
            if f.lower_is_better { "lower" } else { "higher" }
        );
        let max = results
            .iter()
            .map(|r| (f.get)(&r.median))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        for (j, r) in results.iter().enumerate() {
            let v = (f.get)(&r.median);
            let y = y0 + 24.0 + j as f64 * bar_h;
            let w = if max > 0.0 && v.is_finite() {
                v / max * 200.0
            } else {
                0.0
            };
            let color = if r.name == "slo-hub" {
                "#2f5fb3"
            } else {
                "#9aa5b1"
            };
            let _ = writeln!(
                s,
                r#"<text x="{x0}" y="{}">{}</text><rect x="{}" y="{}" width="{w:.1}" height="{}" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
                y + 12.0,
                r.label.split(' ').next().unwrap_or(""),
                x0 + 90.0,
                y + 2.0,
                bar_h - 4.0,
                x0 + 95.0 + w,
                y + 12.0,
                fmt(v, f.digits)
            );
        }
    }
    let _ = writeln!(s, "</svg>");
    s
}
