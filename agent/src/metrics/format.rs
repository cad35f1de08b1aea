//! The exposition formats `/metrics` serves, and which one a scrape's `Accept`
//! header gets.

use super::encode;

/// The exposition formats `/metrics` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The text format 0.0.4: classic histograms only.
    Text,
    /// Delimited `io.prometheus.client.MetricFamily` protobuf: native histograms,
    /// with their classic buckets where the source gives classic bounds.
    Protobuf,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => encode::text::CONTENT_TYPE,
            Format::Protobuf => encode::proto::CONTENT_TYPE,
        }
    }

    /// The format an `Accept` header prefers among the two served: protobuf
    /// when its q value is positive and at least that of every range the text
    /// format matches (`text/plain`, `text/*`, `*/*`); text otherwise, and
    /// without a header. OpenMetrics is not served, so its ranges do not count.
    /// Prometheus sends protobuf first (q=1 in 2.42, q=0.6 in 3.5) only when
    /// native histograms are enabled (tests: the headers logged from both).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut proto_q, mut text_q) = (0.0f64, 0.0f64);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut proto, mut delimited) = (1.0f64, false, false);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else { continue };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse::<f64>().ok().filter(|q| (0.0..=1.0).contains(q)).unwrap_or(0.0),
                    "proto" => proto = v == "io.prometheus.client.MetricFamily",
                    "encoding" => delimited = v == "delimited",
                    _ => {}
                }
            }
            match media.as_str() {
                "application/vnd.google.protobuf" if proto && delimited => proto_q = proto_q.max(q),
                "text/plain" | "text/*" | "*/*" => text_q = text_q.max(q),
                _ => {}
            }
        }
        if proto_q > 0.0 && proto_q >= text_q {
            Format::Protobuf
        } else {
            Format::Text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `Accept` headers, logged from Prometheus 2.42.0 and 3.5.3 scraping
    /// a test server, with and without `--enable-feature=native-histograms`.
    #[test]
    fn negotiation_follows_prometheus() {
        let p2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let p2n = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let p3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        let p3n = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        for (accept, want) in [
            (Some(p2), Format::Text),
            (Some(p2n), Format::Protobuf),
            (Some(p3), Format::Text),
            (Some(p3n), Format::Protobuf),
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some(encode::proto::CONTENT_TYPE), Format::Protobuf),
            (Some("text/plain;q=0.9, application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; q=0.5"), Format::Text),
            (Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0"), Format::Text),
            (Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"), Format::Text),
            (Some("application/vnd.google.protobuf;proto=other.Message;encoding=delimited"), Format::Text),
            (Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=bogus"), Format::Text),
            (Some("APPLICATION/VND.GOOGLE.PROTOBUF; PROTO=io.prometheus.client.MetricFamily; ENCODING=delimited, */*;q=0.1"), Format::Protobuf),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }
}
