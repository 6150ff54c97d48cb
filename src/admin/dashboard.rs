//! The live dashboard at `{admin}/dashboard`: one page, its script and its
//! style sheet, compiled into the crate (`include_str!`), served without a
//! token (they hold no data; the page asks for the token and sends it with
//! every JSON request it makes).
//!
//! The page loads nothing from anywhere else: its script and style sheet
//! are the two other assets below, named relative to the page, so it works
//! under any prefix and behind a router that strips one. Every asset is
//! served with a `Content-Security-Policy` that allows only those two
//! files, `fetch` to the admin service's own origin and nothing inline.

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{Response, StatusCode};
use http_body_util::Full;

/// What the dashboard's assets may load: its own script and style sheet,
/// JSON from its own origin; nothing inline, no frames, no forms posted
/// elsewhere, no plugins.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

const PAGE: &str = include_str!("dashboard/dashboard.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// One of the dashboard's three files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asset {
    /// `/dashboard`: the HTML page.
    Page,
    /// `/dashboard.js`: its script.
    Script,
    /// `/dashboard.css`: its style sheet.
    Style,
}

impl Asset {
    /// The asset at `path` (below the admin service's prefix).
    pub(super) fn parse(path: &str) -> Option<Self> {
        match path {
            "/dashboard" => Some(Self::Page),
            "/dashboard.js" => Some(Self::Script),
            "/dashboard.css" => Some(Self::Style),
            _ => None,
        }
    }

    fn content(self) -> (&'static str, &'static str) {
        match self {
            Self::Page => ("text/html; charset=utf-8", PAGE),
            Self::Script => ("text/javascript; charset=utf-8", SCRIPT),
            Self::Style => ("text/css; charset=utf-8", STYLE),
        }
    }

    /// The asset with its headers: the type, the policy, `nosniff`,
    /// `no-store`, no framing, no referrer.
    pub(super) fn response(self) -> Response<Full<Bytes>> {
        let (content_type, body) = self.content();
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        let fixed: [(HeaderName, &'static str); 6] = [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (CACHE_CONTROL, "no-store"),
            (X_FRAME_OPTIONS, "DENY"),
            (REFERRER_POLICY, "no-referrer"),
        ];
        for (name, value) in fixed {
            h.insert(name, HeaderValue::from_static(value));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_named_relative_to_the_page() {
        assert_eq!(Asset::parse("/dashboard"), Some(Asset::Page));
        assert_eq!(Asset::parse("/dashboard.js"), Some(Asset::Script));
        assert_eq!(Asset::parse("/dashboard.css"), Some(Asset::Style));
        assert_eq!(Asset::parse("/dashboard/"), None);
        assert_eq!(Asset::parse("/dashboard.html"), None);
        // The page names its script and style sheet relatively, so a
        // prefix (or a router that strips one) changes nothing.
        assert!(PAGE.contains(r#"<script src="dashboard.js" defer></script>"#));
        assert!(PAGE.contains(r#"<link rel="stylesheet" href="dashboard.css">"#));
    }

    #[test]
    fn nothing_external_nothing_inline() {
        for (name, text) in [("page", PAGE), ("script", SCRIPT), ("style", STYLE)] {
            for banned in ["http://", "https://", "//cdn", "@import", "url("] {
                // The SVG namespace is a name, not something loaded.
                let text = text.replace("http://www.w3.org/2000/svg", "");
                assert!(!text.contains(banned), "{name} holds {banned:?}");
            }
        }
        // No inline script or style, no inline event handlers: the policy
        // would block them.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert!(!PAGE.contains("<style"));
        assert!(!PAGE.contains(" style="));
        let handler = PAGE.match_indices(" on").any(|(i, _)| {
            let rest = &PAGE[i + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "an inline event handler");
        // Data goes into the page as text, never as markup.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(sink), "the script uses {sink}");
        }
    }
}
