use serde_json::json;

use super::*;

fn findings() -> Value {
    json!({
        "type": "object",
        "properties": {
            "findings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string"},
                        "line": {"type": "integer", "minimum": 1},
                        "severity": {"enum": ["high", "medium", "low"]}
                    },
                    "required": ["file", "line", "severity"]
                }
            }
        },
        "required": ["findings"]
    })
}

#[test]
fn a_matching_answer_is_parsed_and_fences_are_tolerated() {
    let s = OutputSchema::new(&findings()).unwrap();
    let answer = r#"{"findings": [{"file": "a.rs", "line": 3, "severity": "high"}]}"#;
    let Checked::Valid(v) = s.check_text(answer) else {
        panic!("valid answer refused")
    };
    assert_eq!(v["findings"][0]["line"], 3);
    let fenced = format!("```json\n{answer}\n```");
    assert_eq!(s.check_text(&fenced), Checked::Valid(v));
}

#[test]
fn errors_name_where_the_answer_is_wrong() {
    let s = OutputSchema::new(&findings()).unwrap();
    let Checked::Invalid(errors) =
        s.check_text(r#"{"findings": [{"file": "a.rs", "line": 0, "severity": "huge"}]}"#)
    else {
        panic!("invalid answer accepted")
    };
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.starts_with("at /findings/0/line:")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("at /findings/0/severity:")),
        "{errors:?}"
    );
    let Checked::Invalid(errors) = s.check_text("Here are my findings: none.") else {
        panic!("prose accepted")
    };
    assert!(errors[0].contains("not one JSON value"), "{errors:?}");
    assert!(s.correction(&errors).contains("\"findings\""));
}

#[test]
fn bad_schemas_say_what_is_wrong() {
    assert_eq!(
        OutputSchema::new(&json!("object")).unwrap_err(),
        SchemaError::NotAnObject("a string")
    );
    let e = OutputSchema::new(&json!({"type": "objekt"}))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("output_schema is not a valid JSON Schema: at /type:"),
        "{e}"
    );
    let big = json!({"type": "object", "description": "x".repeat(MAX_SCHEMA_BYTES)});
    assert!(matches!(
        OutputSchema::new(&big).unwrap_err(),
        SchemaError::TooLarge(n) if n > MAX_SCHEMA_BYTES
    ));
}

#[test]
fn anthropic_form_closes_objects_and_describes_unsupported_constraints() {
    let a = for_anthropic(&findings());
    assert_eq!(a["additionalProperties"], false);
    let item = &a["properties"]["findings"]["items"];
    assert_eq!(item["additionalProperties"], false);
    assert!(item["properties"]["line"].get("minimum").is_none());
    assert_eq!(item["properties"]["line"]["description"], "(minimum: 1)");
    // The enum's values are data, not schemas.
    assert_eq!(
        item["properties"]["severity"]["enum"],
        json!(["high", "medium", "low"])
    );
}

#[test]
fn openai_strict_only_for_closed_fully_required_objects() {
    assert!(!openai_strict(&findings()));
    let strict = json!({
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": false
    });
    assert!(openai_strict(&strict));
    assert!(openai_strict(&json!({"type": "array", "items": strict})));
}

#[test]
fn a_final_tool_takes_objects_as_they_are_and_wraps_anything_else() {
    assert_eq!(final_tool_schema(&findings()), findings());
    let list = json!({"type": "array", "items": {"type": "string"}});
    let wrapped = final_tool_schema(&list);
    assert_eq!(wrapped["type"], "object");
    assert_eq!(wrapped["properties"]["answer"], list);
    let input = json!({"answer": ["a.rs", "b.rs"]});
    assert_eq!(from_tool_input(&list, &input), json!(["a.rs", "b.rs"]));
    assert_eq!(from_tool_input(&findings(), &input), input);
}

#[test]
fn property_names_are_not_taken_for_keywords() {
    let schema = json!({
        "type": "object",
        "properties": {
            "maximum": {"type": "number"},
            "properties": {"type": "string", "maxLength": 5}
        },
        "required": ["maximum", "properties"],
        "additionalProperties": false
    });
    let a = for_anthropic(&schema);
    assert_eq!(a["properties"]["maximum"], json!({"type": "number"}));
    assert!(a["properties"].get("additionalProperties").is_none(), "{a}");
    assert_eq!(
        a["properties"]["properties"]["description"],
        "(maxLength: 5)"
    );
    assert!(openai_strict(&schema));
}
