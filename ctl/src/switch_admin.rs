//! The live mode switch on the admin listener: `POST /switch?to=kernel|dpdk`
//! (optionally `&fail=N`: the next N restores fail on purpose, a drill of
//! the take-back path), `GET /switch`, and its metric families.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dpuproxy_switch::{Path, SwitchBoard, SwitchError, metrics::PAUSE_BOUNDS_US};

use crate::exposition::Exposition;

/// How long `POST /switch` waits for the switch to settle before it
/// answers 504 (the switch goes on).
pub const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// A status and a JSON body.
pub type Reply = (u16, String);

fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn error(status: u16, msg: &str) -> Reply {
    (status, serde_json::json!({ "error": msg }).to_string())
}

/// `GET /switch`: where new connections go and the totals.
pub fn status(board: &SwitchBoard) -> Reply {
    board.settled();
    let s = board.metrics.summary();
    let body = serde_json::json!({
        "current": board.current().label(),
        "switching_to": board.switching_to().map(Path::label),
        "totals": s,
    });
    (200, body.to_string())
}

/// `POST /switch?...`: start a switch and wait (bounded) for it to settle.
pub fn request(board: &SwitchBoard, query: &str) -> Reply {
    let Some(to) = query_value(query, "to") else {
        return error(400, "missing ?to=kernel|dpdk");
    };
    let to: Path = match to.parse() {
        Ok(p) => p,
        Err(e) => return error(400, &e),
    };
    let fail = match query_value(query, "fail").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return error(400, "fail= takes a count"),
    };
    let from = board.current();
    let t0 = Instant::now();
    let before = match board.request_drill(to, fail) {
        Ok(before) => before,
        Err(e @ SwitchError::Already(_)) => {
            let body = serde_json::json!({ "from": from.label(), "to": to.label(), "already": true, "note": e.to_string() });
            return (200, body.to_string());
        }
        Err(e @ (SwitchError::Busy(_) | SwitchError::NotReady(_))) => {
            return error(409, &e.to_string());
        }
    };
    while !board.settled() {
        if t0.elapsed() >= SETTLE_WAIT {
            let body = serde_json::json!({
                "error": "the switch has not settled yet; it goes on (GET /switch)",
                "so_far": board.metrics.summary().since(&before),
            });
            return (504, body.to_string());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let moved = board.metrics.summary().since(&before);
    let body = serde_json::json!({
        "from": from.label(),
        "to": to.label(),
        "moved": moved.moved,
        "taken_back": moved.taken_back,
        "failed": moved.failed,
        "stayed": moved.stayed,
        "pause_p99_us": moved.pause_p99_us,
        "ms": t0.elapsed().as_secs_f64() * 1e3,
    });
    (200, body.to_string())
}

/// `dpuproxy switch` arguments.
#[derive(clap::Args, Debug)]
pub struct SwitchArgs {
    /// The path to move to: kernel or dpdk.
    #[arg(long)]
    pub to: Path,
    /// The proxy's admin listener.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub admin: std::net::SocketAddr,
    /// Drill: make the next N restores fail on purpose (each such
    /// connection is taken back by its source).
    #[arg(long, default_value_t = 0)]
    pub fail: u64,
}

/// Ask the admin listener at `admin` to switch to `to` (the next `fail`
/// restores failing on purpose): the HTTP status and the JSON body.
pub fn post_switch(
    admin: std::net::SocketAddr,
    to: Path,
    fail: u64,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("cannot reach the admin listener {admin}: {e}"))?;
    s.set_read_timeout(Some(SETTLE_WAIT + Duration::from_secs(10)))?;
    write!(
        s,
        "POST /switch?to={}&fail={fail} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        to.label(),
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer from {admin}: {head:?}"))?;
    Ok((status, body.trim_end().to_string()))
}

/// `dpuproxy switch`: POST /switch and print the answer; an error unless
/// it is 200.
pub fn run(args: &SwitchArgs) -> anyhow::Result<()> {
    let (status, body) = post_switch(args.admin, args.to, args.fail)?;
    println!("{body}");
    if status != 200 {
        anyhow::bail!("the switch was refused or did not settle (HTTP {status})");
    }
    Ok(())
}

/// The switch's metric families, in the exposition format.
pub(crate) fn render(o: &mut Exposition, board: &SwitchBoard) {
    let m = &board.metrics;
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let cur = board.current();
    o.labelled(
        "dpuproxy_switch_path",
        "gauge",
        "1 on the path new connections go to (live mode switch).",
        "path",
        [Path::Dpdk, Path::Kernel].map(|p| (p.label(), u64::from(p == cur))),
    );
    o.labelled(
        "dpuproxy_switch_moved_total",
        "counter",
        "Connections moved between the paths, by destination.",
        "to",
        [
            (Path::Dpdk.label(), r(&m.moved_to_dpdk)),
            (Path::Kernel.label(), r(&m.moved_to_kernel)),
        ],
    );
    o.single(
        "dpuproxy_switches_total",
        "counter",
        "Switches requested.",
        r(&m.switches),
    );
    o.single(
        "dpuproxy_switch_failed_total",
        "counter",
        "Connections lost in a move (reset).",
        r(&m.failed),
    );
    o.single(
        "dpuproxy_switch_taken_back_total",
        "counter",
        "Connections the destination could not restore, restored on their source.",
        r(&m.taken_back),
    );
    o.single(
        "dpuproxy_switch_stayed_total",
        "counter",
        "Open connections that could not move and stayed on their path.",
        r(&m.stayed),
    );
    let name = "dpuproxy_switch_pause_us";
    o.family(
        name,
        "histogram",
        "Per-connection pause of a move (hold to steered at the destination), microseconds.",
    );
    let mut cumulative = 0;
    for (i, b) in m.pause_buckets.iter().enumerate() {
        cumulative += r(b);
        let le = PAUSE_BOUNDS_US
            .get(i)
            .map_or_else(|| "+Inf".to_string(), u64::to_string);
        o.line(format_args!("{name}_bucket{{le=\"{le}\"}} {cumulative}"));
    }
    o.line(format_args!("{name}_sum {}", r(&m.pause_sum_us)));
    o.line(format_args!("{name}_count {cumulative}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_anything_moves() {
        let b: SwitchBoard = SwitchBoard::new(Path::Dpdk);
        assert_eq!(request(&b, "").0, 400);
        assert_eq!(request(&b, "to=disk").0, 400);
        assert_eq!(request(&b, "to=kernel&fail=x").0, 400);
        // No steering yet: the DPDK path is not up, and a drill's fault is
        // not armed by a request that starts nothing.
        let (code, body) = request(&b, "to=kernel&fail=3");
        assert_eq!(code, 409, "no steering: {body}");
        assert!(body.contains("dpdk path is not up"), "{body}");
        assert!(
            !b.restore_fails_on_purpose(),
            "a refused request leaves no fault armed"
        );
        let (code, body) = status(&b);
        assert_eq!(code, 200);
        assert!(body.contains("\"current\":\"dpdk\""), "{body}");
    }

    #[test]
    fn metrics_list_every_family_with_a_complete_histogram() {
        let b: SwitchBoard = SwitchBoard::new(Path::Kernel);
        let mut o = Exposition::default();
        render(&mut o, &b);
        let out = o.0;
        for want in [
            "dpuproxy_switch_path{path=\"kernel\"} 1",
            "dpuproxy_switch_path{path=\"dpdk\"} 0",
            "dpuproxy_switch_moved_total{to=\"dpdk\"} 0",
            "dpuproxy_switches_total 0",
            "dpuproxy_switch_failed_total 0",
            "dpuproxy_switch_pause_us_bucket{le=\"+Inf\"} 0",
            "dpuproxy_switch_pause_us_count 0",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }
}
