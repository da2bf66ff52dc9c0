//! Which servers and which cells a comparison has, and which cells cannot run (and why).

use c10k_server::{Availability, Strategy};

/// What a row of the matrix runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// `c10k serve --strategy NAME`.
    Strategy,
    /// An external server: a shell command with `{port}`.
    Peer {
        /// The command.
        command: String,
    },
}

/// A row of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The strategy's or the peer's name.
    pub name: String,
    /// What runs.
    pub kind: TargetKind,
    /// Why it cannot run here at all (`None`: it can).
    pub unavailable: Option<String>,
    /// The most connections it can hold by design.
    pub conn_limit: Option<usize>,
    /// Its item in the C10K list (`None` for a peer).
    pub item: Option<String>,
    /// How it works, in a line.
    pub summary: String,
}

impl Target {
    /// "strategy" or "peer".
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            TargetKind::Strategy => "strategy",
            TargetKind::Peer { .. } => "peer",
        }
    }
}

/// Parses `NAME=COMMAND`.
pub fn parse_peer(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, command)) if !name.trim().is_empty() && !command.trim().is_empty() => {
            Ok((name.trim().to_string(), command.trim().to_string()))
        }
        _ => Err(format!(
            "'{s}' is not NAME=COMMAND: use e.g. --peer 'redis=redis-server --port {{port}}'"
        )),
    }
}

/// A strategy as a row, from the registry: its availability and connection limit.
pub fn strategy_target(strategy: Strategy) -> Target {
    let info = strategy.info();
    let unavailable = match strategy.availability() {
        Availability::Available => None,
        Availability::NotBuilt { planned } => Some(format!("not built yet ({planned})")),
        Availability::Unavailable { reason } => Some(format!("unavailable here: {reason}")),
    };
    Target {
        name: info.name.to_string(),
        kind: TargetKind::Strategy,
        unavailable,
        conn_limit: strategy.conn_limit(),
        item: Some(info.item.to_string()),
        summary: info.summary.to_string(),
    }
}

/// The rows: the named strategies (every strategy of the registry when `names` is
/// `None`), then the peers. Unknown names are an error that lists the known ones.
pub fn targets(
    names: Option<&[String]>,
    peers: &[(String, String)],
) -> Result<Vec<Target>, String> {
    let mut rows = Vec::new();
    match names {
        None => rows.extend(Strategy::ALL.iter().map(|i| strategy_target(i.strategy))),
        Some(names) => {
            for n in names {
                let s: Strategy = n.parse()?;
                if rows.iter().any(|t: &Target| t.name == s.name()) {
                    continue;
                }
                rows.push(strategy_target(s));
            }
        }
    }
    for (name, command) in peers {
        if rows.iter().any(|t| &t.name == name) {
            return Err(format!("the peer name '{name}' is taken: choose another"));
        }
        rows.push(Target {
            name: name.clone(),
            kind: TargetKind::Peer {
                command: command.clone(),
            },
            unavailable: None,
            conn_limit: None,
            item: None,
            summary: format!("peer: {command}"),
        });
    }
    if rows.is_empty() {
        return Err("nothing to compare: name a strategy or a peer".into());
    }
    Ok(rows)
}

/// Marks the strategy rows that do not serve `app` (`kernel` serves echo only) as
/// unavailable, with the registry's reason: their cells show n/a and why.
pub fn only_serving(rows: &mut [Target], app: &str) {
    for row in rows.iter_mut().filter(|r| r.kind == TargetKind::Strategy) {
        if let (None, Ok(s)) = (&row.unavailable, row.name.parse::<Strategy>()) {
            if let Err(why) = s.serves_app(app) {
                row.unavailable = Some(why);
            }
        }
    }
}

/// Why `target` cannot run `conns` connections, if it cannot; `fd_limit` is the open
/// files limit of the load (and of the servers, which raise theirs to the same hard
/// limit).
pub fn cannot_run(target: &Target, conns: usize, fd_limit: u64) -> Option<String> {
    if let Some(why) = &target.unavailable {
        return Some(why.clone());
    }
    if let Some(limit) = target.conn_limit {
        if conns > limit {
            return Some(format!("beyond its limit of {limit} connections"));
        }
    }
    let need = conns as u64 + c10k_load::limits::FD_MARGIN;
    if need > fd_limit {
        return Some(format!(
            "the open files limit ({fd_limit}) is below the {need} descriptors needed: raise \
             ulimit -n"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strategy_that_serves_echo_only_is_na_for_http() {
        let mut rows = targets(Some(&["kernel".into(), "epoll-et".into()]), &[]).unwrap();
        let kernel_before = rows[0].unavailable.clone();
        only_serving(&mut rows, "echo");
        assert_eq!(rows[0].unavailable, kernel_before, "echo is served");
        only_serving(&mut rows, "http");
        assert!(rows[1].unavailable.is_none(), "epoll-et serves every app");
        if kernel_before.is_none() {
            let why = rows[0].unavailable.as_deref().unwrap();
            assert!(why.contains("--app echo only"), "{why}");
        }
    }

    #[test]
    fn every_registry_strategy_is_a_row_by_default() {
        let rows = targets(None, &[]).unwrap();
        assert_eq!(rows.len(), Strategy::ALL.len());
        for (row, info) in rows.iter().zip(Strategy::ALL.iter()) {
            assert_eq!(row.name, info.name);
            let available = info.strategy.availability() == Availability::Available;
            assert_eq!(row.unavailable.is_none(), available, "{}", row.name);
        }
    }

    #[test]
    fn names_and_peers() {
        let names = vec!["epoll-et".to_string(), "epoll-et".into(), "epoll-lt".into()];
        let peers = vec![("nginx".to_string(), "nginx -p {port}".to_string())];
        let rows = targets(Some(&names), &peers).unwrap();
        let got: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(got, ["epoll-et", "epoll-lt", "nginx"]);
        assert_eq!(rows[2].kind_name(), "peer");
        assert!(targets(Some(&["nope".to_string()]), &[]).is_err());
        let clash = vec![("epoll-et".to_string(), "x".to_string())];
        assert!(targets(Some(&names), &clash).is_err());
        assert_eq!(
            parse_peer("a=b {port} c=d"),
            Ok(("a".to_string(), "b {port} c=d".to_string()))
        );
        assert!(parse_peer("nocommand").is_err());
        assert!(parse_peer("=x").is_err());
    }

    #[test]
    fn cells_a_target_cannot_run_say_why() {
        let mut t = strategy_target(Strategy::EpollEt);
        assert_eq!(cannot_run(&t, 10_000, 20_000), None);
        assert!(
            cannot_run(&t, 30_000, 20_000)
                .unwrap()
                .contains("ulimit -n")
        );
        t.conn_limit = Some(1024);
        assert_eq!(cannot_run(&t, 1_000, 20_000), None);
        assert!(cannot_run(&t, 10_000, 20_000).unwrap().contains("1024"));
        t.unavailable = Some("unavailable here: no io_uring".into());
        assert!(cannot_run(&t, 10, 20_000).unwrap().contains("io_uring"));
        // select's limit comes from the registry.
        assert_eq!(strategy_target(Strategy::Select).conn_limit, Some(1024));
    }
}
