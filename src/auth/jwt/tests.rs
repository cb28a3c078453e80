use super::*;

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[test]
fn alg_none_in_any_case_is_refused() {
    for alg in ["none", "None", "NONE", "nOnE", "", "HS1"] {
        let t = format!(
            "{}.{}.sig",
            b64(&serde_json::json!({"alg": alg})),
            b64(&serde_json::json!({"iss": "x"}))
        );
        assert_eq!(
            inspect(&t).unwrap_err(),
            AuthError::AlgorithmNotAllowed,
            "{alg}"
        );
    }
}

#[test]
fn crit_and_bad_kids_are_refused() {
    for crit in [
        serde_json::json!(["exp"]),
        serde_json::json!(null),
        serde_json::json!([]),
    ] {
        let t = format!(
            "{}.{}.sig",
            b64(&serde_json::json!({"alg": "RS256", "crit": crit})),
            b64(&serde_json::json!({}))
        );
        assert_eq!(
            inspect(&t).unwrap_err(),
            AuthError::UnsupportedCritical,
            "{crit}"
        );
    }
    for kid in ["../../etc/passwd", "a b", "", "k\\1"] {
        let t = format!(
            "{}.{}.sig",
            b64(&serde_json::json!({"alg": "RS256", "kid": kid})),
            b64(&serde_json::json!({}))
        );
        assert_eq!(inspect(&t).unwrap_err(), AuthError::Malformed, "{kid}");
    }
}

#[test]
fn shape_and_size() {
    assert_eq!(inspect("a.b").unwrap_err(), AuthError::Malformed);
    assert_eq!(inspect("a.b.c.d").unwrap_err(), AuthError::Malformed);
    assert_eq!(inspect("!!.b.c").unwrap_err(), AuthError::Malformed);
    let big = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(inspect(&big).unwrap_err(), AuthError::TooLarge);
}
