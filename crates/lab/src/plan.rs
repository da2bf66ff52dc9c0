//! Which servers and which cells a comparison has, and which cells cannot run (and why).

pub mod peers;
pub mod pyfield;
pub mod python;

use c10k_server::{Availability, Strategy};

use peers::Preset;
use python::PyPeer;

/// What a row of the matrix runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// `c10k serve --strategy NAME`.
    Strategy,
    /// An external server: a shell command with `{port}`, or a preset's marker
    /// ([`Preset::command`], [`PyPeer::command`]).
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

/// Parses a preset's name (`nginx`, `redis`, `asyncio`, `uvloop`...: its marker
/// command) or `NAME=COMMAND`.
pub fn parse_peer(s: &str) -> Result<(String, String), String> {
    if let Some(preset) = Preset::from_name(s.trim()) {
        return Ok((preset.name().to_string(), preset.command(None)));
    }
    if let Some(peer) = PyPeer::from_name(s.trim()) {
        return Ok((peer.name().to_string(), peer.command(None)));
    }
    match s.split_once('=') {
        Some((name, command)) if !name.trim().is_empty() && !command.trim().is_empty() => {
            Ok((name.trim().to_string(), command.trim().to_string()))
        }
        _ => Err(format!(
            "'{s}' is neither a preset ({}, {}) nor NAME=COMMAND: use e.g. --peer nginx or \
             --peer 'redis=redis-server --port {{port}}'",
            Preset::names(),
            PyPeer::names()
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
/// `None`), then the peers (a preset is looked for and its version read here). Unknown
/// names are an error that lists the known ones.
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
        if let Some((preset, _)) = Preset::parse_command(command) {
            rows.push(preset.target(name));
            continue;
        }
        if let Some((peer, python)) = PyPeer::parse_command(command) {
            let python = python.unwrap_or_else(|| python::DEFAULT_PYTHON.into());
            rows.push(peer.target(name, &python));
            continue;
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

/// Marks the rows that do not serve `app` as unavailable, with the reason: a strategy
/// the registry says cannot (`kernel` serves echo only), a preset made for another app
/// (nginx serves http only, the Python peers echo). Their cells show n/a and why.
pub fn only_serving(rows: &mut [Target], app: &str) {
    only_serving_load(rows, app, None);
}

/// [`only_serving`] for a load with request size `size` (`c10k load --size`), which
/// some servers cannot answer: with a size the http load sends `POST /echo` with a
/// body, which stock nginx cannot echo.
pub fn only_serving_load(rows: &mut [Target], app: &str, size: Option<usize>) {
    for row in rows.iter_mut().filter(|r| r.unavailable.is_none()) {
        let refused = match &row.kind {
            TargetKind::Strategy => match row.name.parse::<Strategy>() {
                Ok(s) => s.serves_app(app).err(),
                Err(_) => None,
            },
            TargetKind::Peer { command } => match PyPeer::parse_command(command) {
                Some((p, _)) => p.serves(app).err(),
                None => Preset::parse_command(command).and_then(|(p, _)| p.serves(app, size).err()),
            },
        };
        if refused.is_some() {
            row.unavailable = refused;
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
    if need > fd_limit && processes_for(target, conns, fd_limit).is_none() {
        return Some(format!(
            "the open files limit ({fd_limit}) is below the {need} descriptors needed, and \
             it cannot serve from several processes: raise ulimit -n"
        ));
    }
    None
}

/// Processes that hold `conns` connections when each may open `fd_limit` descriptors:
/// `None` when one suffices or `target` cannot be split (a peer; `fork`, `prefork` and
/// `kernel`, which refuse `--processes`).
pub fn processes_for(target: &Target, conns: usize, fd_limit: u64) -> Option<usize> {
    let margin = c10k_load::limits::FD_MARGIN;
    let need = conns as u64 + margin;
    if need <= fd_limit || fd_limit <= 2 * margin {
        return None;
    }
    let splits = match (&target.kind, target.name.parse::<Strategy>()) {
        (TargetKind::Strategy, Ok(s)) => {
            s.process_model() == c10k_server::ProcessModel::Threads && s != Strategy::Kernel
        }
        _ => false,
    };
    splits.then(|| load_processes_for(conns, fd_limit))
}

/// Load processes that open `conns` connections under `fd_limit` each (1: one does).
pub fn load_processes_for(conns: usize, fd_limit: u64) -> usize {
    let per = fd_limit
        .saturating_sub(2 * c10k_load::limits::FD_MARGIN)
        .max(1);
    (conns as u64).div_ceil(per).max(1) as usize
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
    fn a_preset_name_is_a_peer_of_its_own() {
        for p in Preset::ALL {
            let (name, command) = parse_peer(p.name()).unwrap();
            assert_eq!(name, p.name());
            assert_eq!(Preset::parse_command(&command), Some((p, None)));
        }
        let why = parse_peer("apache").unwrap_err();
        assert!(
            why.contains("nginx, redis") && why.contains("NAME=COMMAND"),
            "{why}"
        );
        // NAME=COMMAND is a command even when NAME is a preset's.
        let (_, command) = parse_peer("nginx=nginx -c my.conf").unwrap();
        assert_eq!(Preset::parse_command(&command), None);
    }

    #[test]
    fn a_python_peer_name_is_a_peer_that_echoes_only() {
        for p in PyPeer::ALL {
            let (name, command) = parse_peer(p.name()).unwrap();
            assert_eq!(name, p.name());
            assert_eq!(PyPeer::parse_command(&command), Some((p, None)));
        }
        assert!(parse_peer("trio").unwrap_err().contains("asyncio, uvloop"));
        let python = |p: PyPeer| Target {
            unavailable: None,
            ..p.target(p.name(), std::path::Path::new("/nonexistent-c10k/python3"))
        };
        let mut rows = vec![python(PyPeer::Asyncio), python(PyPeer::C10kPyUring)];
        only_serving_load(&mut rows, "echo", Some(1024));
        assert!(rows.iter().all(|r| r.unavailable.is_none()), "{rows:?}");
        only_serving(&mut rows, "resp");
        assert!(
            rows[1]
                .unavailable
                .as_deref()
                .unwrap()
                .starts_with("c10k-py-uring serves --app echo only")
        );
    }

    #[test]
    fn preset_rows_carry_their_binary_version_and_limits() {
        let peers: Vec<_> = ["nginx", "redis"].map(|p| parse_peer(p).unwrap()).into();
        let rows = targets(Some(&["epoll-et".to_string()]), &peers).unwrap();
        for (row, p) in rows[1..].iter().zip(Preset::ALL) {
            assert_eq!((row.name.as_str(), row.kind_name()), (p.name(), "peer"));
            assert_eq!(row.conn_limit, Some(peers::PRESET_MAX_CONNS));
            let TargetKind::Peer { command } = &row.kind else {
                panic!("{row:?}")
            };
            let (preset, bin) = Preset::parse_command(command).unwrap();
            assert_eq!(preset, p);
            match (&row.unavailable, bin) {
                (None, Some(bin)) => {
                    assert!(row.summary.contains(&bin.display().to_string()), "{row:?}");
                    let version = p.version(&bin).unwrap();
                    assert!(row.summary.contains(&version), "{row:?}");
                }
                (Some(why), None) => {
                    assert!(
                        why.contains(&format!("apt install {}", p.package())),
                        "{why}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        let twice = vec![parse_peer("nginx").unwrap(), parse_peer("nginx").unwrap()];
        assert!(targets(None, &twice).is_err(), "one row per name");
    }

    #[test]
    fn a_preset_is_na_for_another_app_or_a_body() {
        let preset = |p: Preset| Target {
            unavailable: None,
            ..p.target(p.name())
        };
        let mut rows = vec![preset(Preset::Nginx), preset(Preset::Redis)];
        only_serving(&mut rows, "http");
        assert_eq!(rows[0].unavailable, None);
        assert_eq!(
            rows[1].unavailable.as_deref(),
            Some("redis serves --app resp only")
        );
        let mut rows = vec![preset(Preset::Nginx), preset(Preset::Redis)];
        only_serving(&mut rows, "echo");
        assert_eq!(
            rows[0].unavailable.as_deref(),
            Some("nginx serves --app http only")
        );
        let mut rows = vec![preset(Preset::Nginx)];
        only_serving_load(&mut rows, "http", Some(100));
        assert!(
            rows[0]
                .unavailable
                .as_deref()
                .unwrap()
                .contains("POST /echo")
        );
        // A missing binary keeps its own reason.
        let mut rows = vec![Target {
            unavailable: Some("nginx not found on PATH: apt install nginx".into()),
            ..Preset::Nginx.target("nginx")
        }];
        only_serving(&mut rows, "echo");
        assert!(
            rows[0]
                .unavailable
                .as_deref()
                .unwrap()
                .contains("apt install")
        );
    }

    #[test]
    fn levels_beyond_one_process_split_where_the_strategy_can() {
        let et = strategy_target(Strategy::EpollEt);
        assert_eq!(processes_for(&et, 10_000, 20_000), None);
        assert_eq!(processes_for(&et, 100_000, 20_000), Some(6));
        assert_eq!(load_processes_for(100_000, 20_000), 6);
        assert_eq!(load_processes_for(10, 20_000), 1);
        assert_eq!(cannot_run(&et, 100_000, 20_000), None);
        for s in [Strategy::Fork, Strategy::Prefork, Strategy::Kernel] {
            let t = strategy_target(s);
            assert_eq!(processes_for(&t, 100_000, 20_000), None, "{}", t.name);
        }
        let fork = strategy_target(Strategy::Fork);
        let why = cannot_run(&fork, 100_000, 20_000).unwrap();
        assert!(why.contains("ulimit -n") || why.contains("limit"), "{why}");
    }

    #[test]
    fn cells_a_target_cannot_run_say_why() {
        let mut t = strategy_target(Strategy::EpollEt);
        assert_eq!(cannot_run(&t, 10_000, 20_000), None);
        // Beyond one process's descriptors it runs as several processes.
        assert_eq!(cannot_run(&t, 30_000, 20_000), None);
        let peer = &targets(None, &[("p".into(), "x {port}".into())]).unwrap();
        let peer = peer.last().unwrap();
        assert!(
            cannot_run(peer, 30_000, 20_000)
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
