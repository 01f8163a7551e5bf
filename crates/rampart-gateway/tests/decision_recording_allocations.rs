//! The request phase records the policy's decision in the flow record as the
//! policy returned it: the matched objects, skipped rules and revision move
//! (or are shared) into the record, nothing is formatted to text. So a phase
//! costs exactly the allocations of the policy evaluation itself, however
//! many objects the rule matched. Counted with this binary's allocator, on
//! the test's own thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use rampart_gateway::access_log::FlowRecord;
use rampart_gateway::policy_stage::{self, FlowFacts};
use rampart_policy::{ConnectionFacts, EvalPoint, Identity, Policy, RequestFacts};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting allocations per thread.
struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as for `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

const POLICY: &str = r#"
[identities]
users = [{ name = "alice", groups = ["engineering"] }]

[lists]
press = ["news.test/press/*"]

[[access]]
name = "engineering reads the press with an alert"
when = { groups = ["engineering"], lists = ["press"], methods = ["GET"], hosts = ["news.test"] }
action = "alert"
"#;

#[test]
fn recording_a_decision_allocates_nothing_beyond_evaluating_it() {
    let (policy, _) = Policy::from_str(POLICY, "policy.toml", Path::new("."))
        .unwrap_or_else(|e| panic!("the test policy must compile: {e}"));
    let identity = Identity {
        user: Some("alice".into()),
        groups: vec!["engineering".into()],
        ..Default::default()
    };
    let facts = FlowFacts {
        identity: &identity,
        process: None,
        host: "news.test",
        dst_ip: None,
        port: 80,
        last: EvalPoint::Response,
        also_host: None,
    };
    let request = RequestFacts {
        connection: ConnectionFacts {
            identity: &identity,
            process: None,
            host: Some("news.test"),
            dst_ip: None,
            port: 80,
        },
        method: "GET",
        path: "/press/today",
    };
    let mut record = FlowRecord::new("127.0.0.1:1".parse().unwrap(), "GET", String::new());
    // Warm up whatever the first evaluation sets up, then count one of each.
    for _ in 0..3 {
        drop(policy.evaluate_request_until(&request, EvalPoint::Response));
        policy_stage::request_phase(&policy, &facts, "GET", "/press/today", &mut record);
    }
    let evaluating = allocations(|| {
        drop(policy.evaluate_request_until(&request, EvalPoint::Response));
    });
    let phase = allocations(|| {
        policy_stage::request_phase(&policy, &facts, "GET", "/press/today", &mut record);
    });

    let recorded = record
        .policy
        .as_ref()
        .expect("the rule's decision is recorded");
    assert_eq!(recorded.action.as_str(), "alert");
    assert!(
        recorded.matched.len() >= 3,
        "the rule matched several objects: {:?}",
        recorded.matched
    );
    assert_eq!(
        phase, evaluating,
        "the request phase allocated {phase} times, the evaluation alone {evaluating}: \
         recording the decision must not copy or format it"
    );
    println!(
        "request phase: {phase} allocations (the policy evaluation's), {} matched objects recorded",
        recorded.matched.len()
    );
}
