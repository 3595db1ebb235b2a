use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: VmTestArgs,
}

fn jobs_for(argv: &[&str]) -> Result<Vec<Job>> {
    jobs(&Cli::try_parse_from(std::iter::once("vm-test").chain(argv.iter().copied()))?.args)
}

#[test]
fn the_matrix_boots_every_kernel_and_one_without_btf() {
    for kernel in KERNELS {
        assert!(
            BOOTS
                .iter()
                .any(|b| std::ptr::eq(b.kernel, kernel) && !b.hide_btf)
        );
    }
    assert!(BOOTS.iter().any(|b| b.hide_btf));
    for (i, boot) in BOOTS.iter().enumerate() {
        assert!(BOOTS[..i].iter().all(|other| other.name != boot.name));
        assert!(
            boot.runs
                .iter()
                .any(|r| r.suite.test == "probe" && r.expect == Expect::Pass),
            "{}",
            boot.name
        );
        assert!(
            boot.runs.iter().all(|r| !r.variants.is_empty()),
            "{}",
            boot.name
        );
    }
}

#[test]
fn the_named_tests_exist() {
    for boot in BOOTS {
        for runs in boot.runs {
            let suite = runs.suite;
            let source = std::fs::read_to_string(
                cmd::workspace_root().join(format!("agent/tests/integration/{}.rs", suite.test)),
            )
            .unwrap();
            for name in suite.only {
                assert!(
                    source.contains(&format!("fn {name}(")),
                    "{}: no test {name}",
                    suite.test
                );
            }
        }
    }
}

#[test]
fn each_suite_runs_once_per_variant_with_the_fixed_arguments_first() {
    let jobs = jobs_for(&["6.12"]).unwrap();
    assert_eq!(jobs.len(), 1);
    let plan = jobs[0].plan();
    let labels: Vec<String> = plan.runs.iter().map(Run::label).collect();
    assert_eq!(
        labels,
        [
            "probe/tracepoint",
            "probe/fentry",
            "kernel_log/tracepoint",
            "kernel_log/fentry",
            "detect/tracepoint",
            "detect/fentry",
            "detect/tracepoint",
            "detect/fentry"
        ]
    );
    assert_eq!(
        plan.runs[0].args,
        ["--include-ignored", "--test-threads=1", "probe::"],
        "the probe module's tests, all"
    );
    assert!(plan.runs.iter().all(|r| r.binary == TEST_BINARY));
    assert_eq!(plan.runs[4].args[2], "--exact");
    let timed: Vec<bool> = jobs[0].runs.iter().map(|r| r.timed).collect();
    assert_eq!(
        timed,
        [false, false, false, false, false, false, true, true]
    );
    assert!(
        plan.runs[6]
            .args
            .contains(&"detect::go_style_at_calls_count_once_per_source".to_owned())
    );
    assert!(!plan.hide_btf);
}

#[test]
fn the_no_btf_boot_expects_fentry_refused_and_auto_to_pass() {
    let jobs = jobs_for(&["6.12-no-btf"]).unwrap();
    assert!(jobs[0].hide_btf);
    let runs: Vec<(String, Expect)> = jobs[0]
        .plan()
        .runs
        .iter()
        .map(Run::label)
        .zip(jobs[0].runs.iter().map(|r| r.expect))
        .collect();
    assert_eq!(runs[0], ("probe/auto".to_owned(), Expect::Pass));
    assert!(matches!(runs.last(), Some((label, Expect::FailWith(_))) if label == "probe/fentry"));
}

#[test]
fn probes_and_test_arguments_replace_the_boots_runs() {
    let jobs = jobs_for(&["6.12-no-btf", "--probe", "tracepoint"]).unwrap();
    let labels: Vec<String> = jobs[0].plan().runs.iter().map(Run::label).collect();
    assert_eq!(labels, ["probe/tracepoint", "detect/tracepoint"]);
    assert!(jobs[0].runs.iter().all(|r| r.expect == Expect::Pass));

    let jobs = jobs_for(&["6.1", "--no-btf", "--test", "follow", "--", "some_filter"]).unwrap();
    assert_eq!(jobs[0].name, "6.1-no-btf");
    assert!(jobs[0].hide_btf);
    let runs: Vec<(&str, &[String], Option<&str>)> = jobs[0]
        .runs
        .iter()
        .map(|r| (r.test.as_str(), &r.args[..], r.probe.as_deref()))
        .collect();
    let filter = ["some_filter".to_owned()];
    assert_eq!(
        runs,
        [
            ("follow", &filter[..], Some("tracepoint")),
            ("follow", &filter[..], Some("fentry"))
        ]
    );
    assert_eq!(jobs_for(&[]).unwrap().len(), BOOTS.len());
    assert!(jobs_for(&["5.10"]).is_err());
    assert!(jobs_for(&["6.1", "--test", "follow"]).is_err());
}

fn transcript(lines: &str) -> console::Transcript {
    let mut t = console::Transcript::default();
    for line in lines.lines() {
        t.line(line, Duration::ZERO);
    }
    t
}

#[test]
fn a_soft_lockup_is_told_from_other_trouble() {
    let lockup = "[ 36.6] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [t:129]\n";
    assert!(soft_lockup(&transcript(lockup)));
    assert!(!soft_lockup(&transcript(
        "[ 1.0] Kernel panic - not syncing: x\n"
    )));
    assert!(!soft_lockup(&transcript("[ 1.0] all fine\n")));
}

fn verdict_of(boot: &str, lines: &str) -> std::result::Result<(), String> {
    let job = jobs_for(&[boot]).unwrap().remove(0);
    let end = console::End::Exited("exit status: 0".into());
    verdict(&job, &job.plan(), &transcript(lines), &end)
}

#[test]
fn a_boot_passes_when_every_run_does_what_it_must() {
    let run = |label: &str, result: &str, exit: u8| {
        format!(
            "RELOADSCOPE-VM-SUITE-START {label}\ntest t ... {result}\n\
             RELOADSCOPE-VM-SUITE-END {label} exit={exit}\n"
        )
    };
    let both = [
        run("probe/tracepoint", "ok", 0),
        run("probe/fentry", "ok", 0),
        run("kernel_log/tracepoint", "ok", 0),
        run("kernel_log/fentry", "ok", 0),
        run("detect/tracepoint", "ok", 0),
        run("detect/fentry", "ok", 0),
        // The timed ones.
        run("detect/tracepoint", "ok", 0),
        run("detect/fentry", "ok", 0),
    ]
    .concat();
    let ok = format!("RELOADSCOPE-VM-BTF=present\n{both}RELOADSCOPE-VM-EXIT=0\n");
    assert_eq!(verdict_of("6.12", &ok), Ok(()));

    let failing = ok.replacen(
        "test t ... ok\nRELOADSCOPE-VM-SUITE-END detect/fentry exit=0",
        "test t ... FAILED\nRELOADSCOPE-VM-SUITE-END detect/fentry exit=101",
        1,
    );
    assert_eq!(
        verdict_of("6.12", &failing),
        Err("detect/fentry failed: t".to_owned())
    );

    let cut = both
        .split("RELOADSCOPE-VM-SUITE-START detect/fentry")
        .next()
        .unwrap()
        .to_owned();
    let why = verdict_of("6.12", &cut).unwrap_err();
    assert!(why.contains("detect/fentry did not run"), "{why}");
    assert!(
        why.contains("no end mark: qemu exited (exit status: 0) after detect/tracepoint"),
        "{why}"
    );

    let none_ran = ok.replace("test t ... ok\n", "");
    assert!(
        verdict_of("6.12", &none_ran)
            .unwrap_err()
            .contains("ran no test")
    );

    let refused =
        "test t ... FAILED\npanicked: no probe of Fentry loads as root: [(Fentry, Btf(x))]\n";
    let no_btf = [
        run("probe/auto", "ok", 0),
        run("detect/auto", "ok", 0),
        format!("RELOADSCOPE-VM-SUITE-START probe/fentry\n{refused}RELOADSCOPE-VM-SUITE-END probe/fentry exit=101\n"),
    ]
    .concat();
    let hidden = format!("RELOADSCOPE-VM-BTF=absent\n{no_btf}RELOADSCOPE-VM-EXIT=101\n");
    assert_eq!(verdict_of("6.12-no-btf", &hidden), Ok(()));
    let visible = hidden.replace("=absent", "=present");
    assert!(
        verdict_of("6.12-no-btf", &visible)
            .unwrap_err()
            .contains("BTF was to be hidden")
    );
    let other = hidden.replace("Btf(x)", "Load(x)");
    assert!(
        verdict_of("6.12-no-btf", &other)
            .unwrap_err()
            .contains("lacks [\"Btf(\"]")
    );
}

#[test]
fn without_dev_kvm_the_matrix_is_skipped_with_a_line_saying_so() {
    use AccelChoice::*;
    let skipped = decide(Auto, false, false).unwrap_err();
    assert!(
        skipped.starts_with("kernels: skipped: no /dev/kvm"),
        "{skipped}"
    );
    assert_eq!(decide(Auto, true, false), Ok((Accel::Kvm, None)));
    assert!(
        matches!(decide(Auto, true, true), Ok((Accel::Tcg, Some(note))) if note.contains("kvm_pvm"))
    );
    assert_eq!(decide(Kvm, true, true), Ok((Accel::Kvm, None)));
    assert!(decide(Kvm, false, false).is_err());
    assert!(matches!(
        decide(Tcg, false, false),
        Ok((Accel::Tcg, Some(_)))
    ));
}

#[test]
fn executables_come_from_cargos_messages() {
    let messages = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"reloadscope"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"probe"},"executable":"/t/debug/deps/probe-1"}
{"reason":"compiler-artifact","target":{"kind":["bench"],"name":"overhead"},"executable":"/t/release/deps/overhead-2"}
{"reason":"build-finished","success":true}"#;
    assert_eq!(
        executables(messages, "test"),
        [("probe".to_owned(), PathBuf::from("/t/debug/deps/probe-1"))]
    );
    assert_eq!(
        executables(messages, "bench"),
        [(
            "overhead".to_owned(),
            PathBuf::from("/t/release/deps/overhead-2")
        )]
    );
}
