//! The JVM sizing setting of the model (`settings.jvm`): the heap options Kiln puts into a Java
//! image's `JAVA_TOOL_OPTIONS`, so the JVM sizes its heap from the container's memory limit rather
//! than the node's memory. Where they go is `crate::plan` (Maven: assembled in; Dockerfile:
//! added by mutation, opt-in).

use serde::{Deserialize, Serialize};

/// The default percentage of the container's memory limit the heap may take: the rest is left to
/// metaspace, thread stacks, the code cache and direct buffers.
pub const DEFAULT_MAX_RAM_PERCENTAGE: f64 = 75.0;

/// An app's JVM sizing (`settings.jvm`). Every field has a default, so `{}` means "the defaults"
/// (which is how a Dockerfile app opts in); `{"enabled": false}` turns the options off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JvmSetting {
    /// false: no options are added (a Maven app's image then starts the JVM with its own defaults).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `-XX:MaxRAMPercentage`: the heap's share of the container's memory limit, 1 to 100.
    #[serde(default = "default_max_ram_percentage")]
    pub max_ram_percentage: f64,
    /// `-XX:+ExitOnOutOfMemoryError`: a JVM out of heap exits (and its pod restarts) instead of
    /// limping on with threads dying one by one.
    #[serde(default = "yes")]
    pub exit_on_oom: bool,
}

fn yes() -> bool {
    true
}
fn default_max_ram_percentage() -> f64 {
    DEFAULT_MAX_RAM_PERCENTAGE
}

impl Default for JvmSetting {
    fn default() -> Self {
        JvmSetting { enabled: true, max_ram_percentage: DEFAULT_MAX_RAM_PERCENTAGE, exit_on_oom: true }
    }
}

impl JvmSetting {
    /// The options for `JAVA_TOOL_OPTIONS`, or None when turned off.
    /// `-XX:MaxRAMPercentage=75.0 -XX:+ExitOnOutOfMemoryError` by default.
    pub fn java_tool_options(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let p = self.max_ram_percentage;
        // The JVM's own notation for a double flag (75.0, 62.5), as `-XX:+PrintFlagsFinal` shows it.
        let percentage = if p.fract() == 0.0 { format!("{p:.1}") } else { format!("{p}") };
        let mut options = format!("-XX:MaxRAMPercentage={percentage}");
        if self.exit_on_oom {
            options.push_str(" -XX:+ExitOnOutOfMemoryError");
        }
        Some(options)
    }

    /// Why the setting cannot be used, for a 422 (`settings.jvm.…`).
    pub fn check(&self) -> Result<(), String> {
        let p = self.max_ram_percentage;
        if !(1.0..=100.0).contains(&p) {
            return Err(format!(
                "settings.jvm.max_ram_percentage must be from 1 to 100 (the share of the container's memory limit the heap may \
                 take; default {DEFAULT_MAX_RAM_PERCENTAGE}), not {p}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_rendered_as_the_jvm_writes_them_and_checked() {
        assert_eq!(JvmSetting::default().java_tool_options().as_deref(), Some("-XX:MaxRAMPercentage=75.0 -XX:+ExitOnOutOfMemoryError"));
        let parsed: JvmSetting = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, JvmSetting::default());
        let s: JvmSetting = serde_json::from_str(r#"{"max_ram_percentage": 62.5, "exit_on_oom": false}"#).unwrap();
        assert_eq!(s.java_tool_options().as_deref(), Some("-XX:MaxRAMPercentage=62.5"));
        let off: JvmSetting = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
        assert_eq!(off.java_tool_options(), None);
        for bad in [0.0, 0.5, 100.1, 120.0, -5.0] {
            let e = JvmSetting { max_ram_percentage: bad, ..Default::default() }.check().unwrap_err();
            assert!(e.contains("from 1 to 100") && e.contains(&format!("not {bad}")), "{e}");
        }
        for good in [1.0, 50.0, 100.0] {
            JvmSetting { max_ram_percentage: good, ..Default::default() }.check().unwrap();
        }
        assert!(serde_json::from_str::<JvmSetting>(r#"{"max_ram": 75}"#).is_err(), "unknown fields are refused");
    }
}
