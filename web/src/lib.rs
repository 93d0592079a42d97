//! The browser worker: a Web Worker that volunteers a core.
//!
//! Protocol, task handling and the kernel are core's `WorkerSession`; this
//! crate only adds a `WebSocket`, timers, and reports to the page. The compute
//! loop runs one task per turn of the worker's event loop, so Pause and Stop
//! from the page act within one task.

use std::cell::RefCell;
use std::rc::Rc;

use colonnade_core::backoff::Backoff;
use colonnade_core::codec;
use colonnade_core::protocol::WorkerKind;
use colonnade_core::worker::{WorkerConfig, WorkerError, WorkerEvent, WorkerSession};
use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket, WorkerGlobalScope};

pub mod bench;

/// One volunteer connection, owned by one Web Worker.
#[wasm_bindgen::prelude::wasm_bindgen]
pub struct Volunteer {
    state: Rc<RefCell<State>>,
}

impl std::fmt::Debug for Volunteer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("Volunteer").field("url", &s.url).field("tiles_done", &s.tiles_done).finish()
    }
}

struct State {
    url: String,
    name: String,
    /// Bytes this Web Worker's wasm instance lends to panels and products.
    memory: u64,
    /// This Web Worker's kernel speed, flop/s, measured once at start.
    flops: u64,
    /// Called with a plain object describing what changed, for the page.
    report: Function,
    socket: Option<WebSocket>,
    session: Option<WorkerSession>,
    paused: bool,
    stopped: bool,
    compute_scheduled: bool,
    backoff: Backoff,
    /// Why the master was left, when this side closed the socket (a
    /// refusal): the close event then carries no reason.
    left_because: Option<String>,
    /// Counts connections, so a timer set for an old one does nothing.
    generation: u32,
    /// `now_ms()` when this connection opened: the session's clock starts there.
    opened_ms: f64,
    /// Tiles this worker computed that the master verified and kept.
    tiles_done: u32,
    /// Flops computed, and the time it took: this worker's speed.
    flops_done: f64,
    compute_ms: f64,
    /// Tiles sent back and not yet accepted, and where each lies in C.
    sent: std::collections::BTreeMap<u64, (usize, usize, usize, usize)>,
    /// Keeps the socket's callbacks alive as long as the socket.
    callbacks: Vec<Closure<dyn FnMut(JsValue)>>,
}

#[wasm_bindgen::prelude::wasm_bindgen]
impl Volunteer {
    /// Connects to the master at `url` (a ws:// or wss:// URL) and starts
    /// computing, holding at most `memory` bytes of panels and products.
    #[wasm_bindgen::prelude::wasm_bindgen(constructor)]
    pub fn new(url: String, name: String, memory: f64, report: Function) -> Volunteer {
        let state = State {
            url,
            name,
            memory: memory as u64,
            flops: bench::measure_speed(),
            report,
            socket: None,
            session: None,
            paused: false,
            stopped: false,
            compute_scheduled: false,
            backoff: Backoff::new((js_sys::Math::random() * (1u64 << 53) as f64) as u64),
            left_because: None,
            generation: 0,
            opened_ms: 0.0,
            tiles_done: 0,
            flops_done: 0.0,
            compute_ms: 0.0,
            sent: Default::default(),
            callbacks: Vec::new(),
        };
        let volunteer = Volunteer { state: Rc::new(RefCell::new(state)) };
        connect(&volunteer.state);
        volunteer
    }

    /// Finishes the task at hand, then computes nothing until `resume`.
    pub fn pause(&self) {
        self.state.borrow_mut().paused = true;
        report(&self.state.borrow(), "paused", &[]);
    }

    pub fn resume(&self) {
        self.state.borrow_mut().paused = false;
        report(&self.state.borrow(), "connected", &[]);
        schedule_compute(&self.state);
    }

    /// Hands back every task it holds and closes for good.
    pub fn stop(&self) {
        let mut s = self.state.borrow_mut();
        s.stopped = true;
        if let Some(session) = s.session.as_mut() {
            session.release_all();
        }
        flush(&mut s);
        if let Some(socket) = s.socket.take() {
            let _ = socket.close();
        }
        report(&s, "stopped", &[]);
    }
}

fn scope() -> WorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn now_ms() -> f64 {
    scope().performance().map_or(0.0, |p| p.now())
}

fn set_timeout(ms: i32, f: impl FnOnce() + 'static) {
    let callback = Closure::once_into_js(f);
    let _ = scope().set_timeout_with_callback_and_timeout_and_arguments_0(callback.unchecked_ref(), ms);
}

fn connect(state: &Rc<RefCell<State>>) {
    let url = state.borrow().url.clone();
    let socket = match WebSocket::new(&url) {
        Ok(socket) => socket,
        Err(e) => {
            report(&state.borrow(), "error", &[("error", format!("{url} is not a usable WebSocket URL: {e:?}").into())]);
            return;
        }
    };
    socket.set_binary_type(BinaryType::Arraybuffer);
    let on_open = {
        let state = Rc::clone(state);
        Closure::<dyn FnMut(JsValue)>::new(move |_| {
            let mut s = state.borrow_mut();
            s.generation += 1;
            s.opened_ms = now_ms();
            let config = WorkerConfig { memory: s.memory, flops: s.flops, ..WorkerConfig::new(WorkerKind::Browser, s.name.clone()) };
            s.session = Some(WorkerSession::new(config, std::time::Duration::ZERO));
            flush(&mut s);
            let status = if s.paused { "paused" } else { "connected" };
            report(&s, status, &[]);
            drop(s);
            schedule_tick(&state);
        })
    };
    let on_message = {
        let state = Rc::clone(state);
        Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let Ok(event) = event.dyn_into::<MessageEvent>() else { return };
            let Ok(buffer) = event.data().dyn_into::<js_sys::ArrayBuffer>() else { return };
            receive(&state, &Uint8Array::new(&buffer).to_vec());
        })
    };
    let on_close = {
        let state = Rc::clone(state);
        Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let reason = event.dyn_into::<CloseEvent>().map(|e| e.reason()).unwrap_or_default();
            closed(&state, reason);
        })
    };
    socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    let mut s = state.borrow_mut();
    s.callbacks = vec![on_open, on_message, on_close];
    s.socket = Some(socket);
    report(&s, "connecting", &[]);
}

fn receive(state: &Rc<RefCell<State>>, bytes: &[u8]) {
    let mut s = state.borrow_mut();
    let now = session_time(&s);
    let Some(session) = s.session.as_mut() else { return };
    match session.handle_message(bytes, now) {
        Ok(Some(WorkerEvent::JobStarted { m, k, n, dtype, .. })) => {
            let shape = format!("{m}x{k} times {k}x{n}, {dtype}");
            report(&s, "connected", &[("job", shape.into()), ("m", (m as f64).into()), ("n", (n as f64).into())]);
        }
        Ok(Some(WorkerEvent::Accepted { lease, done, total })) => {
            // Counted only once the master has verified it and kept it.
            if let Some((row, col, rows, cols)) = s.sent.remove(&lease) {
                s.tiles_done += 1;
                let place = [("row", row), ("col", col), ("rows", rows), ("cols", cols), ("job_done", done as usize), ("job_total", total as usize)];
                let fields: Vec<(&str, JsValue)> = place.iter().map(|&(k, v)| (k, (v as f64).into())).collect();
                report(&s, "connected", &fields);
            }
        }
        Ok(Some(WorkerEvent::JobDone { .. })) => report(&s, "connected", &[("job", "done".into())]),
        Ok(Some(WorkerEvent::Welcomed { .. })) => s.backoff.welcomed(),
        Ok(_) => {}
        Err(e) => {
            let why = match &e {
                WorkerError::Refused(reason) => format!("the master refused this tab: {reason}"),
                other => format!("the master sent something unusable: {other}"),
            };
            report(&s, "error", &[("error", why.clone().into())]);
            s.left_because = Some(why);
            if let Some(socket) = s.socket.as_ref() {
                let _ = socket.close();
            }
            return;
        }
    }
    drop(s);
    schedule_compute(state);
}

/// Time on this connection's clock.
fn session_time(s: &State) -> std::time::Duration {
    std::time::Duration::from_secs_f64((now_ms() - s.opened_ms).max(0.0) / 1e3)
}

/// Wakes the session when it asks to: to send a heartbeat, or to notice a silent master.
fn schedule_tick(state: &Rc<RefCell<State>>) {
    let s = state.borrow();
    let Some(session) = s.session.as_ref() else { return };
    let wait = session.poll_timeout().saturating_sub(session_time(&s));
    let generation = s.generation;
    drop(s);
    let state = Rc::clone(state);
    set_timeout(wait.as_millis().min(i32::MAX as u128) as i32, move || tick(&state, generation));
}

fn tick(state: &Rc<RefCell<State>>, generation: u32) {
    let mut s = state.borrow_mut();
    if s.generation != generation {
        return;
    }
    let now = session_time(&s);
    let Some(session) = s.session.as_mut() else { return };
    if let Err(e) = session.handle_timeout(now) {
        // The close handler reconnects.
        report(&s, "reconnecting", &[("reason", e.to_string().into())]);
        s.left_because = Some(e.to_string());
        if let Some(socket) = s.socket.as_ref() {
            let _ = socket.close();
        }
        return;
    }
    flush(&mut s);
    drop(s);
    schedule_tick(state);
}

fn closed(state: &Rc<RefCell<State>>, reason: String) {
    let mut s = state.borrow_mut();
    s.session = None;
    s.socket = None;
    s.callbacks.clear();
    if s.stopped {
        return;
    }
    let reason = match s.left_because.take() {
        Some(why) if reason.is_empty() => why,
        _ => reason,
    };
    let wait = s.backoff.next_wait().as_millis() as i32;
    report(&s, "reconnecting", &[("retry_ms", wait.into()), ("reason", reason.into())]);
    drop(s);
    let state = Rc::clone(state);
    set_timeout(wait, move || {
        if !state.borrow().stopped {
            connect(&state);
        }
    });
}

/// Runs the next task on a later turn of the event loop, so messages from the
/// page (pause, stop) are handled between tasks.
fn schedule_compute(state: &Rc<RefCell<State>>) {
    let mut s = state.borrow_mut();
    if s.compute_scheduled || s.paused || s.stopped {
        return;
    }
    s.compute_scheduled = true;
    drop(s);
    let state = Rc::clone(state);
    set_timeout(0, move || compute_one(&state));
}

fn compute_one(state: &Rc<RefCell<State>>) {
    let mut s = state.borrow_mut();
    s.compute_scheduled = false;
    if s.paused || s.stopped {
        return;
    }
    let Some(task) = s.session.as_mut().and_then(WorkerSession::next_task) else { return };
    let start = now_ms();
    let c = task.compute();
    let elapsed = now_ms() - start;
    let Some(session) = s.session.as_mut() else { return };
    if session.complete(task.lease, c, std::time::Duration::from_secs_f64(elapsed.max(0.0) / 1e3)) {
        s.sent.insert(task.lease, (task.row, task.col, task.rows(), task.cols()));
        s.flops_done += task.flops();
        s.compute_ms += elapsed;
    }
    flush(&mut s);
    drop(s);
    schedule_compute(state);
}

fn flush(s: &mut State) {
    let (Some(session), Some(socket)) = (s.session.as_mut(), s.socket.as_ref()) else { return };
    while let Some(frame) = session.poll_transmit() {
        if socket.send_with_u8_array(&codec::encode_frame(&frame)).is_err() {
            break; // the close handler reconnects
        }
    }
}

/// Tells the page what is going on: `state`, totals, and any `extra` fields.
fn report(s: &State, state: &str, extra: &[(&str, JsValue)]) {
    let o = Object::new();
    let gflops = if s.compute_ms > 0.0 { s.flops_done / s.compute_ms / 1e6 } else { 0.0 };
    let fields: [(&str, JsValue); 3] = [("state", state.into()), ("tiles", s.tiles_done.into()), ("gflops", gflops.into())];
    for (key, value) in fields.iter().chain(extra) {
        let _ = Reflect::set(&o, &(*key).into(), value);
    }
    let _ = s.report.call1(&JsValue::NULL, &o);
}
