use super::*;

const BEFORE: &str = r#"# HELP strait_requests HTTP requests.
# TYPE strait_requests counter
strait_requests_total{direction="outbound",source_cluster="east",source_principal="",destination_service="echo.demo",destination_cluster="west",response_code="200"} 100
strait_requests_total{direction="outbound",source_cluster="east",source_principal="",destination_service="echo.demo",destination_cluster="west",response_code="503"} 5
strait_requests_total{direction="inbound",source_cluster="east",source_principal="spiffe://strait.local/ns/demo/sa/client",destination_service="echo.demo",destination_cluster="west",response_code="200"} 7
strait_request_duration_seconds_bucket{direction="outbound",source_cluster="east",destination_service="echo.demo",destination_cluster="west",le="0.001"} 10
strait_request_duration_seconds_bucket{direction="outbound",source_cluster="east",destination_service="echo.demo",destination_cluster="west",le="0.002"} 100
strait_request_duration_seconds_bucket{direction="outbound",source_cluster="east",destination_service="echo.demo",destination_cluster="west",le="+Inf"} 105
strait_gateway_tunnels_total{source_cluster="east",destination_service="echo.demo",destination_cluster="west",result="ok"} 3
strait_gateway_bytes_total{source_cluster="east",destination_service="echo.demo",destination_cluster="west",direction="to_endpoint"} 1000
# EOF
"#;

const AFTER: &str = r#"strait_requests_total{direction="outbound",source_cluster="east",source_principal="",destination_service="echo.demo",destination_cluster="west",response_code="200"} 290
strait_requests_total{direction="outbound",source_cluster="east",source_principal="",destination_service="echo.demo",destination_cluster="west",response_code="503"} 15
strait_requests_total{direction="inbound",source_cluster="east",source_principal="spiffe://strait.local/ns/demo/sa/client",destination_service="echo.demo",destination_cluster="west",response_code="200"} 200
strait_request_duration_seconds_bucket{direction="outbound",source_cluster="east",destination_service="echo.demo",destination_cluster="west",le="0.001"} 110
strait_request_duration_seconds_bucket{direction="outbound",source_cluster="east",destination_service="echo.demo",destination_cluster="west",le="0.002"} 300
strait_request_duration_seconds_bucket{direction="outbound",source_cluster="east",destination_service="echo.demo",destination_cluster="west",le="+Inf"} 305
strait_gateway_tunnels_total{source_cluster="east",destination_service="echo.demo",destination_cluster="west",result="ok"} 5
strait_gateway_tunnels_total{source_cluster="central",destination_service="echo.demo",destination_cluster="west",result="not_linked"} 4
strait_gateway_bytes_total{source_cluster="east",destination_service="echo.demo",destination_cluster="west",direction="to_endpoint"} 3000
strait_gateway_bytes_total{source_cluster="east",destination_service="echo.demo",destination_cluster="west",direction="from_endpoint"} 800
"#;

#[test]
fn lines_parse_with_labels_escapes_and_special_values() {
    let table: [(&str, Sample); 4] = [
        (
            "up 1",
            Sample {
                name: "up".into(),
                labels: vec![],
                value: 1.0,
            },
        ),
        (
            r#"x{a="1",b="q\"uote\\d"} 2.5 1700000000"#,
            Sample {
                name: "x".into(),
                labels: vec![("a".into(), "1".into()), ("b".into(), "q\"uote\\d".into())],
                value: 2.5,
            },
        ),
        (
            r#"h_bucket{le="+Inf"} +Inf"#,
            Sample {
                name: "h_bucket".into(),
                labels: vec![("le".into(), "+Inf".into())],
                value: f64::INFINITY,
            },
        ),
        (
            "e{} 0",
            Sample {
                name: "e".into(),
                labels: vec![],
                value: 0.0,
            },
        ),
    ];
    for (line, want) in table {
        assert_eq!(parse(line).unwrap(), vec![want], "{line}");
    }
}

#[test]
fn malformed_lines_are_refused_naming_the_line_and_the_fault() {
    let table = [
        ("x{a=\"1\" 2", "unclosed label set"),
        ("x{a=\"1 2", "unclosed label value"),
        ("x{a} 2", "label without '='"),
        ("x{a=1} 2", "label value not quoted"),
        ("x{a=\"1\"} many", "value is not a number"),
        ("x{a=\"1\"}", "no value"),
        ("justname", "no value"),
    ];
    for (line, why) in table {
        let err = parse(&format!("# ok\nup 1\n{line}\n")).unwrap_err();
        assert!(err.starts_with("line 3: "), "{line}: {err}");
        assert!(err.contains(why), "{line}: {err}");
    }
}

#[test]
fn quantiles_interpolate_inside_the_bucket_like_prometheus() {
    let b = [(0.001, 100.0), (0.002, 300.0), (f64::INFINITY, 300.0)];
    let table = [
        (0.5, Some(0.00125)),
        (0.25, Some(0.00075)),
        (1.0, Some(0.002)),
    ];
    for (q, want) in table {
        let got = quantile(q, &b).unwrap();
        assert!((got - want.unwrap()).abs() < 1e-12, "q {q}: {got}");
    }
    // Above the last finite bound: that bound.
    assert_eq!(
        quantile(0.99, &[(0.1, 1.0), (f64::INFINITY, 10.0)]),
        Some(0.1)
    );
    assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
    assert_eq!(quantile(0.5, &[]), None);
}

#[test]
fn two_scrapes_give_rates_success_and_latency_per_service_and_link() {
    let before = parse(BEFORE).unwrap();
    let after = parse(AFTER).unwrap();
    let grown = growth(&before, &after);
    let (services, links) = figures(&grown, 2.0);
    // Only the callers' (outbound) view counts for services.
    assert_eq!(services.len(), 1, "{services:?}");
    let s = &services[0];
    assert_eq!(
        (
            s.service.as_str(),
            s.source_cluster.as_str(),
            s.destination_cluster.as_str()
        ),
        ("echo.demo", "east", "west")
    );
    assert_eq!(s.requests, 200.0);
    assert_eq!(s.requests_per_second, 100.0);
    assert_eq!(s.success_rate, Some(0.95));
    // 200 observations: 100 in (0, 1 ms], 100 in (1, 2 ms].
    assert!((s.p50_ms.unwrap() - 1.0).abs() < 1e-9, "{s:?}");
    assert!((s.p99_ms.unwrap() - 1.98).abs() < 1e-9, "{s:?}");
    assert_eq!(links.len(), 2, "{links:?}");
    let central = &links[0];
    assert_eq!(central.source_cluster, "central");
    assert_eq!(central.refused_per_second, 2.0);
    assert_eq!(central.tunnels_per_second, 0.0);
    let east = &links[1];
    assert_eq!(east.tunnels_per_second, 1.0);
    assert_eq!(east.bytes_in_per_second, 1000.0);
    assert_eq!(east.bytes_out_per_second, 400.0);
}

#[test]
fn a_counter_that_went_down_was_reset_and_counts_from_zero() {
    let before = parse("c_total{a=\"x\"} 50\n").unwrap();
    let after = parse("c_total{a=\"x\"} 7\nnew_total 3\n").unwrap();
    let g = growth(&before, &after);
    assert_eq!(g[0].value, 7.0);
    assert_eq!(g[1].value, 3.0);
}

#[test]
fn no_requests_means_no_rates_made_up() {
    let quiet = parse(AFTER).unwrap();
    let (services, _) = figures(&growth(&quiet, &quiet), 2.0);
    let s = &services[0];
    assert_eq!(s.requests_per_second, 0.0);
    assert_eq!(s.success_rate, None);
    assert_eq!(s.p50_ms, None);
}
