//! The log: tracing to stderr as text or JSON lines, with the `--log-level` filter and
//! the directives that keep the dependencies' repeated lines out.

/// Log line format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Directives added to the `--log-level` filter, each group unless the filter names
/// one of its targets: they leave out what the agent's own lines say once.
const QUIET: &[&str] = &[
    // aya warns about each kernel feature probe it cannot run; without CAP_BPF that is
    // a line per probe before ours, which says the same once, with the remedy.
    "aya::kernel_features=error",
    // With the API unreachable or refusing, each retry of each watcher would log:
    // kube-runtime's watchers warn at each refused watch (403), kube-client warns at
    // each answer it cannot read, and its HTTP trace layer (module `client::builder`)
    // logs an ERROR for each failed request, a refused connection or a 5xx: 11 lines
    // in 4 s while the API has no route. Each of those errors also comes back to the
    // watcher or the Event poster that made the request, and the agent logs the API
    // going and coming back once each (`apiclient`'s health). kube's other
    // errors stay.
    "kube_runtime=error,kube_client=error,kube_client::client::builder=off",
];

/// `level` with each [`QUIET`] group that it does not speak of: where a target of
/// `level` and one of the group's is a prefix of the other (tracing matches targets
/// by prefix: `kube=debug` covers `kube_client`), the user's choice stands.
pub fn log_filter(level: &str) -> String {
    let target = |directive: &str| -> String {
        let end = directive.find(['[', '=']).unwrap_or(directive.len());
        directive[..end].trim().to_owned()
    };
    let named: Vec<String> = level
        .split(',')
        .map(target)
        .filter(|t| !t.is_empty())
        .collect();
    let mut filter = level.to_owned();
    for group in QUIET {
        let spoken = group.split(',').map(target).any(|quiet| {
            named
                .iter()
                .any(|t| quiet.starts_with(t.as_str()) || t.starts_with(quiet.as_str()))
        });
        if !spoken {
            filter = format!("{filter},{group}");
        }
    }
    filter
}

pub fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(level))
        .map_err(|e| anyhow::anyhow!("--log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBE: &str = "kube_runtime=error,kube_client=error,kube_client::client::builder=off";

    #[test]
    fn the_quiet_directives_go_with_every_filter_that_names_no_target_of_theirs() {
        let all = format!("aya::kernel_features=error,{KUBE}");
        assert_eq!(log_filter("info"), format!("info,{all}"));
        assert_eq!(log_filter("debug"), format!("debug,{all}"));
        // The agent's own kubeapi module is not kube's.
        let ours = "info,reloadscope::kubeapi=debug";
        assert_eq!(log_filter(ours), format!("{ours},{all}"));
    }

    #[test]
    fn a_filter_that_names_a_target_keeps_its_choice_for_that_group() {
        let aya = "aya::kernel_features=error";
        for level in [
            "info,kube=debug",
            "info,kube_client=debug",
            "info,kube_client::client::builder=error",
            "warn,kube_runtime[watcher]=debug",
        ] {
            assert_eq!(log_filter(level), format!("{level},{aya}"), "{level}");
        }
        assert_eq!(
            log_filter("info,aya=debug"),
            format!("info,aya=debug,{KUBE}")
        );
    }

    #[test]
    fn every_filter_made_parses() {
        for level in ["info", "info,kube=debug", "warn,reloadscope::kubeapi=trace"] {
            tracing_subscriber::EnvFilter::try_new(log_filter(level)).unwrap();
        }
    }
}
