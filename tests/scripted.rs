//! `wshost test`: the project's own scripted tests (tests/scripts/*.rhai) run here, inside
//! `cargo test`, and the runner itself is tested on fixtures whose outcome is known.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn the_scripted_tests_in_tests_scripts_pass() {
    let (status, stdout, stderr) = run_cli(&["test", "tests/scripts"]);
    println!("{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
    // Every one of them: losing a file or a test fails here too.
    assert_eq!(last, "21 passed, 0 failed", "{stdout}");
}

#[test]
fn the_runner_reports_each_outcome_with_locations() {
    let started = Instant::now();
    let (status, stdout, _) = run_cli(&[
        "test",
        "tests/fixtures/runner",
        "--timeout",
        "1",
        "--jobs",
        "3",
    ]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    // Everything, the 1 s timeout and the clean-up included, ends well within the limits.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("test {name} ... ")))
            .unwrap_or_else(|| panic!("no line for {name} in\n{stdout}"))
    };
    for ok in [
        "tests/fixtures/runner/pass.rhai::test_arithmetic",
        "tests/fixtures/runner/pass.rhai::test_echo_round_trip",
        "tests/fixtures/runner/leaves_server.rhai::test_leaves_things_open",
        "tests/fixtures/runner/top_level.rhai",
        "tests/fixtures/runner/wait_in_callback.rhai::test_waiting_inside_a_callback_is_an_error",
        "tests/fixtures/runner/callbacks.rhai::test_passes",
        "tests/fixtures/runner/callbacks.rhai::test_an_error_taken_by_on_error_does_not_fail",
    ] {
        assert!(line(ok).contains(" ... ok ("), "{}", line(ok));
        assert!(line(ok).ends_with(" ms)"), "{}", line(ok));
    }
    for failed in [
        "tests/fixtures/runner/fail.rhai::test_wrong_sum",
        "tests/fixtures/runner/timeout.rhai::test_forever",
        "tests/fixtures/runner/timeout.rhai::test_wait_gives_up",
        "tests/fixtures/runner/error.rhai::test_undefined_function",
        "tests/fixtures/runner/broken.rhai",
        "tests/fixtures/runner/callbacks.rhai::test_assert_in_a_callback_fails",
        "tests/fixtures/runner/callbacks.rhai::test_uncaught_error_in_a_timer_fails",
    ] {
        assert!(line(failed).contains(" ... FAILED ("), "{}", line(failed));
    }
    assert!(!stdout.contains("helper_not_a_test"), "{stdout}");

    // Failures say where, with both values and the source line.
    for expected in [
        "    tests/fixtures/runner/fail.rhai:4:5: assert_eq failed: one plus two",
        "      left: 3",
        "     right: 4",
        "    tests/fixtures/runner/timeout.rhai:4:9: the test timed out after 1s",
        "    tests/fixtures/runner/timeout.rhai:9:5: wait_until: the condition was still false after 200 ms",
        "    tests/fixtures/runner/error.rhai:4:11: Function not found: no_such_thing ()",
        "    tests/fixtures/runner/broken.rhai:3:9: syntax error:",
        "       4 |     assert_eq(sum, 4, \"one plus two\");",
        "    tests/fixtures/runner/callbacks.rhai:15:30: assert_eq failed (in onMessage of connection",
        "    tests/fixtures/runner/callbacks.rhai:21:33: Array index 3 out of bounds: only 1 element in array (in timer",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(expected)),
            "missing {expected:?} in\n{stdout}"
        );
    }
    // What the test left open was closed: both ends of the connection, then the server.
    for cleanup in [
        "cleanup: client closed 1001",
        "cleanup: server side closed 1001",
        "cleanup: server stopped",
    ] {
        assert!(stdout.contains(cleanup), "missing {cleanup:?} in\n{stdout}");
    }
    assert_eq!(
        stdout.lines().last(),
        Some("7 passed, 7 failed"),
        "{stdout}"
    );
}

#[test]
fn filter_selects_tests_by_name() {
    let (status, stdout, _) = run_cli(&[
        "test",
        "tests/fixtures/runner",
        "--filter",
        "pass.rhai::test_arith",
    ]);
    assert!(status.success(), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("1 passed, 0 failed"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("test ")).count(), 1);
}

#[test]
fn a_missing_test_path_is_a_usage_error() {
    let (status, _, stderr) = run_cli(&["test", "tests/no-such-folder"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("tests/no-such-folder"), "{stderr}");
}

/// Scenario files whose classes sit beside them (a folder run would take the class files for
/// tests too): each file is run alone.
fn run_scenario(file: &str, tests: usize) {
    let (status, stdout, stderr) = run_cli(&["test", file]);
    println!("{stdout}");
    assert!(status.success(), "{stdout}\n{stderr}");
    let expected = format!("{tests} passed, 0 failed");
    assert_eq!(stdout.lines().last(), Some(expected.as_str()), "{stdout}");
}

#[test]
fn objects_are_one_object_whatever_holds_them() {
    run_scenario("tests/fixtures/objects/references.rhai", 4);
}

#[test]
fn objects_are_as_4d_has_them() {
    run_scenario("tests/fixtures/objects4d/as_in_4d.rhai", 18);
}

#[test]
fn a_closure_made_in_a_method_or_callback_sees_this() {
    run_scenario("tests/fixtures/objects/this_in_closures.rhai", 2);
}
