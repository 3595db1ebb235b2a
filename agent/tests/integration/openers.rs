//! Who opened a volume file: the process the probe saw making the volume's swaps is
//! the kubelet, whatever its command name, so its re-reads are never a reload. A
//! python3 process plays the kubelet (a name the agent does not know). Needs root.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use crate::support::*;
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{ContainerSpec, LabContainer, Strategy};

/// Swaps `<vol>` to a new data dir with the kubelet's steps, says `swapped`, waits for
/// a line on stdin, then reads the file as the kubelet's next sync does.
const KUBELET: &str = r#"
import os, sys
vol, ts = sys.argv[1], sys.argv[2]
os.mkdir(f"{vol}/{ts}")
with open(f"{vol}/{ts}/config.yaml", "w") as f:
    f.write("revision: 1\n")
os.symlink(ts, f"{vol}/..data_tmp")
os.rename(f"{vol}/..data_tmp", f"{vol}/..data")
print("swapped", flush=True)
sys.stdin.readline()
with open(f"{vol}/config.yaml") as f:
    f.read()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn the_swap_writer_is_the_kubelet_whatever_its_name() {
    let (node, pod, w) = shop_volume(VolumeType::ConfigMap, "app-config");
    let bin = &reloadscope_lab::lab_bin().unwrap();
    // Never reloads: the volume's opens stay reported after the update.
    let spec = ContainerSpec::new("naive", w.dir(), "config.yaml", Strategy::NaiveModify);
    let naive = LabContainer::start(bin, &node, &pod, &spec).unwrap();
    let agent = start(&node, true).await;
    wait_metrics(agent.addr, "the consumer", |m| {
        m.matching("reloadscope_consumer_info", &[]).count() == 1
    })
    .await;

    let mut kubelet = Command::new("python3")
        .args(["-c", KUBELET])
        .arg(w.dir())
        .arg("..2026_11_25_18_00_00.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(kubelet.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "swapped");
    let naive_stale = [("container", "naive")];
    wait_metrics(agent.addr, "the update, seen by the probe", |m| {
        detections(m, "ebpf") == 1.0
            && m.get("reloadscope_consumer_stale_seconds", &naive_stale)
                .is_some_and(|s| s > 0.0)
    })
    .await;
    writeln!(kubelet.stdin.take().unwrap()).unwrap();
    assert!(kubelet.wait().unwrap().success());
    let m = wait_metrics(agent.addr, "the re-read counted as the kubelet's", |m| {
        m.sum("reloadscope_foreign_opens_total", &[("opener", "kubelet")]) >= 1.0
    })
    .await;
    assert!(
        m.get(
            "reloadscope_consumer_last_reload_timestamp_seconds",
            &naive_stale
        )
        .is_none()
    );
    agent.stop().await;
    naive.stop().unwrap();
}
