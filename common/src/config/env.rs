//! `RUNNER_AGENT_*` environment overrides, applied to the parsed document
//! before validation.

use super::ENV_PREFIX;

pub(super) fn apply_overrides(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), String> {
    for (name, value) in env {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // These two select the file and the log format; they are not keys.
        if key == "CONFIG" || key == "LOG_FORMAT" {
            continue;
        }
        let key = key.to_ascii_lowercase();
        let value = match value.as_str() {
            "true" => toml::Value::Boolean(true),
            "false" => toml::Value::Boolean(false),
            _ => toml::Value::String(value),
        };
        match key.split_once("__") {
            None => {
                doc.insert(key, value);
            }
            Some((section, field)) => {
                let entry = doc
                    .entry(section.to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(table) = entry else {
                    return Err(format!("{name}: `{section}` is not a table"));
                };
                table.insert(field.to_owned(), value);
            }
        }
    }
    Ok(())
}
