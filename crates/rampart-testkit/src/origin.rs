//! A real HTTP/1.1 origin server on loopback, on its own thread and runtime.
//! Routes:
//! - `/hello` → `hello from origin`
//! - `/headers` → JSON of the request's method, target and headers
//! - `/echo` → the request body streamed back
//! - `/sink` → reads the whole request body, answers its length
//! - `/bytes/N` → N bytes, streamed in 256 KiB chunks (nothing held in memory)
//! - `/slow/MS` → answers after MS milliseconds
//! - `/status/N` → an empty response with status N
//! - `/magic/KIND` → a small file of that kind by its magic bytes (`exe`, `pdf`,
//!   `zip`; anything else is plain text), served as `application/octet-stream`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub struct Origin {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Origin {
    pub fn start() -> Origin {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("origin runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("origin bind");
                addr_tx.send(listener.local_addr().expect("origin address")).expect("the test waits for the origin");
                tokio::pin!(shutdown_rx);
                loop {
                    let (stream, _) = tokio::select! {
                        accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                        _ = &mut shutdown_rx => return,
                    };
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            counter.fetch_add(1, Ordering::Relaxed);
                            route(req)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("origin address");
        Origin {
            addr,
            requests,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn route(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let head = segments.next().unwrap_or("");
    let arg = segments.next().unwrap_or("");
    let response = match head {
        "hello" => Response::new(full("hello from origin")),
        "headers" => {
            let mut headers = serde_json::Map::new();
            for (name, value) in req.headers() {
                headers.insert(
                    name.as_str().to_string(),
                    serde_json::Value::String(value.to_str().unwrap_or("").to_string()),
                );
            }
            let body = serde_json::json!({
                "method": req.method().as_str(),
                "target": req.uri().to_string(),
                "headers": headers,
            });
            Response::new(full(body.to_string()))
        }
        "echo" => Response::new(req.into_body().map_err(|e| Box::new(e) as _).boxed()),
        "sink" => {
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map(|d| d.len() as u64).unwrap_or(0),
                    Err(_) => break,
                }
            }
            Response::new(full(total.to_string()))
        }
        "bytes" => {
            let total: u64 = arg.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 256 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64) as usize;
                    Some((
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                            chunk.slice(..n),
                        )),
                        left - n as u64,
                    ))
                }
            });
            let mut resp = Response::new(StreamBody::new(stream).boxed());
            resp.headers_mut()
                .insert("content-length", total.to_string().parse().unwrap());
            resp
        }
        "magic" => {
            let body: &'static [u8] = match arg {
                "exe" => b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00This program cannot be run in DOS mode.",
                "pdf" => b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
                "zip" => b"PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
                _ => b"just some text\n",
            };
            let mut resp = Response::new(full(Bytes::from_static(body)));
            resp.headers_mut()
                .insert("content-type", "application/octet-stream".parse().unwrap());
            resp
        }
        "slow" => {
            let ms: u64 = arg.parse().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow done"))
        }
        "status" => {
            let mut resp = Response::new(full(""));
            *resp.status_mut() = hyper::StatusCode::from_u16(arg.parse().unwrap_or(500))
                .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
            resp
        }
        _ => {
            let mut resp = Response::new(full("not found"));
            *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
            resp
        }
    };
    Ok(response)
}
