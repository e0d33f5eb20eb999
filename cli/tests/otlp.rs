//! Tracing over OTLP: nodes started with `--otlp-endpoint` export the spans of a batch's life
//! (read, send, ack at the source; apply at the destination) to a collector, here a small
//! OTLP/HTTP receiver of the test's own that decodes the protobuf requests.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aerospike::{WritePolicy, as_bin, as_key};
use ferry_tests::{Link, TopologyBuilder};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use support::Deployment;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

/// One exported span: its name, ids, attributes and the process it came from.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: BTreeMap<String, String>,
    instance: String,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref()))).collect()
}

/// Serves OTLP/HTTP on `listener`: every POST body is decoded as a trace export request and
/// its spans kept in `spans`.
async fn collector(listener: tokio::net::TcpListener, spans: Arc<Mutex<Vec<Span>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let spans = spans.clone();
        tokio::spawn(async move {
            let mut stream = BufReader::new(stream);
            loop {
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                if stream.read_exact(&mut body).await.is_err() {
                    return;
                }
                let request =
                    ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
                record(&spans, request);
                let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Keeps the spans of one export request.
fn record(spans: &Mutex<Vec<Span>>, request: ExportTraceServiceRequest) {
    let mut received = spans.lock().expect("spans");
    for resource_spans in request.resource_spans {
        let resource =
            resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let instance = resource.get("service.instance.id").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Span {
                    name: span.name,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    attributes: attributes(&span.attributes),
                    instance: instance.clone(),
                });
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_export_a_batchs_spans_over_otlp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let spans = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(collector(listener, spans.clone()));

    let built = TopologyBuilder::new("otlp")
        .sites(&["a", "b"], 1)
        .link(Link::new("a", "b").period_ms(20))
        .build();
    let deployment = Deployment::start_with(
        &built.text,
        built.nodes,
        vec!["--otlp-endpoint".to_owned(), endpoint],
    )
    .await;
    let a = deployment.client("a").await;
    for i in 0..20 {
        a.put(&WritePolicy::default(), &as_key!("test", "t", i), &[as_bin!("v", i)])
            .await
            .expect("put");
    }
    deployment.wait_converged("a", "b", Duration::from_secs(30)).await;
    let (a_node, b_node) = (deployment.ids("a")[0].clone(), deployment.ids("b")[0].clone());

    let deadline = Instant::now() + Duration::from_secs(30);
    let named = |spans: &[Span], name: &str| {
        spans.iter().filter(|s| s.name == name).cloned().collect::<Vec<_>>()
    };
    loop {
        let received = spans.lock().expect("spans").clone();
        let batches = named(&received, "xdr.batch");
        let applies = named(&received, "xdr.apply");
        if let (Some(batch), false) = (batches.first(), applies.is_empty()) {
            let children = |name: &str| {
                named(&received, name)
                    .into_iter()
                    .filter(|s| s.parent_span_id == batch.span_id)
                    .count()
            };
            if children("xdr.read") > 0 && children("xdr.send") > 0 {
                assert_eq!(batch.attribute("site"), Some("a"), "{batch:?}");
                assert_eq!(batch.attribute("link"), Some("b"), "{batch:?}");
                assert_eq!(batch.instance, a_node, "the source node names itself: {batch:?}");
                let send = named(&received, "xdr.send")
                    .into_iter()
                    .find(|s| s.parent_span_id == batch.span_id)
                    .expect("send");
                assert!(
                    received
                        .iter()
                        .any(|s| s.name == "xdr.ack" && s.parent_span_id == send.span_id),
                    "an ack span under the send"
                );
                let apply = &applies[0];
                assert_eq!(apply.attribute("site"), Some("b"), "{apply:?}");
                assert_eq!(apply.attribute("from"), Some("a"), "{apply:?}");
                assert_eq!(apply.instance, b_node, "the destination node names itself: {apply:?}");
                return;
            }
        }
        assert!(Instant::now() < deadline, "no complete batch trace arrived; spans: {received:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
