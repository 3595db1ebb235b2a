//! The node's network: a bridge that holds the pods' gateway address (so the host
//! reaches pods, and pods the host, over the bridge alone), and a firewall rule that
//! drops anything a pod sends to another interface. With the pods' routes limited to
//! the bridge's subnet and the Service range (`files::cni`), and this rule besides,
//! no pod packet can leave the machine.

use std::fs;
use std::process::Command;

use anyhow::Result;

use super::Layout;
use crate::cmd;

pub const BRIDGE: &str = "rscope0";
pub const GATEWAY: &str = "10.217.0.1";
pub const POD_CIDR: &str = "10.217.0.0/24";
pub const SERVICE_CIDR: &str = "10.96.0.0/24";
/// The `kubernetes` Service: the first address of the Service range.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

const FORWARD_SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";
const COMMENT: &str = "reloadscope-cluster: pod traffic stays on the node";

/// The FORWARD rule, as iptables arguments after the action.
fn forward_rule() -> Vec<&'static str> {
    vec![
        "FORWARD",
        "-i",
        BRIDGE,
        "!",
        "-o",
        BRIDGE,
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        "DROP",
    ]
}

/// Makes the bridge with the gateway address and the drop rule; records the
/// ip_forward setting (the CNI bridge plugin turns it on) for `down` to restore.
pub fn up(layout: &Layout) -> Result<()> {
    let forward = fs::read_to_string(FORWARD_SYSCTL)?;
    fs::write(layout.state.join("ip_forward.before"), forward.trim())?;
    if !link_exists(BRIDGE) {
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    }
    ip(&["addr", "replace", &format!("{GATEWAY}/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    if !iptables("-C", &forward_rule()) {
        cmd::run(
            Command::new("iptables")
                .args(["-w", "-I"])
                .args(forward_rule()),
        )?;
    }
    Ok(())
}

/// Removes the rule and the bridge, restores ip_forward. Each step runs even if an
/// earlier one failed; the first error is returned.
pub fn down(layout: &Layout) -> Result<()> {
    let mut first_err = None;
    while iptables("-C", &forward_rule()) {
        if !iptables("-D", &forward_rule()) {
            first_err.get_or_insert(anyhow::anyhow!("could not delete the FORWARD rule"));
            break;
        }
    }
    if link_exists(BRIDGE)
        && let Err(e) = ip(&["link", "del", BRIDGE])
    {
        first_err.get_or_insert(e);
    }
    let saved = layout.state.join("ip_forward.before");
    if let Ok(before) = fs::read_to_string(&saved)
        && let Err(e) = fs::write(FORWARD_SYSCTL, before.trim())
    {
        first_err.get_or_insert(e.into());
    }
    first_err.map_or(Ok(()), Err)
}

/// Whether any `KUBE-*` chain exists (in any table, IPv4 or IPv6): another
/// Kubernetes node's, if it is there before `up`.
pub fn kube_chains_exist() -> bool {
    ["iptables-save", "ip6tables-save"].iter().any(|save| {
        Command::new(save)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(":KUBE-"))
    })
}

/// Removes every `KUBE-*` chain the kubelet and kube-proxy made, and the rules of
/// the built-in chains that jump to them, with one `iptables-restore --noflush` per
/// family (its input is `iptables-save`'s own, quoting included).
pub fn remove_kube_chains() -> Result<()> {
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        let saved = Command::new(save).output()?;
        let script = kube_chain_removal(&String::from_utf8_lossy(&saved.stdout));
        if script.is_empty() {
            continue;
        }
        let mut child = Command::new(restore)
            .args(["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(&mut child.stdin.take().expect("piped"), script.as_bytes())?;
        let status = child.wait()?;
        anyhow::ensure!(
            status.success(),
            "{restore} failed ({status}) on:\n{script}"
        );
    }
    Ok(())
}

/// The `iptables-restore` input that deletes the `KUBE-*` chains of `saved` (an
/// `iptables-save` dump) and every rule elsewhere that jumps to one.
fn kube_chain_removal(saved: &str) -> String {
    let mut out = String::new();
    let mut table: Option<&str> = None;
    let (mut deletes, mut chains) = (Vec::new(), Vec::new());
    for line in saved.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name);
        } else if let Some(chain) = line.strip_prefix(":KUBE-") {
            chains.push(format!(
                "KUBE-{}",
                chain.split(' ').next().unwrap_or_default()
            ));
        } else if let Some(rule) = line.strip_prefix("-A ") {
            if !rule.starts_with("KUBE-") && rule.contains(" -j KUBE-") {
                deletes.push(format!("-D {rule}"));
            }
        } else if line == "COMMIT" {
            if let Some(t) = table.take()
                && (!deletes.is_empty() || !chains.is_empty())
            {
                out.push_str(&format!("*{t}\n"));
                for d in deletes.drain(..) {
                    out.push_str(&format!("{d}\n"));
                }
                for c in &chains {
                    out.push_str(&format!("-F {c}\n"));
                }
                for c in chains.drain(..) {
                    out.push_str(&format!("-X {c}\n"));
                }
                out.push_str("COMMIT\n");
            }
            deletes.clear();
            chains.clear();
        }
    }
    out
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn ip(args: &[&str]) -> Result<()> {
    cmd::run(Command::new("ip").args(args))
}

/// `iptables -w ACTION RULE`, quietly; whether it succeeded.
fn iptables(action: &str, rule: &[&str]) -> bool {
    Command::new("iptables")
        .args(["-w", action])
        .args(rule)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_chains_and_the_jumps_to_them_are_removed_and_nothing_else() {
        let saved = "# Generated by iptables-save
*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -i docker0 -j ACCEPT
-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -j DROP
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
COMMIT
";
        assert_eq!(
            kube_chain_removal(saved),
            "*mangle
-F KUBE-KUBELET-CANARY
-X KUBE-KUBELET-CANARY
COMMIT
*filter
-D INPUT -j KUBE-FIREWALL
-F KUBE-FIREWALL
-X KUBE-FIREWALL
COMMIT
"
        );
        assert_eq!(
            kube_chain_removal("*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
            ""
        );
    }
}
