//! Diagnostics are data (severity, message, labelled spans, notes, a help line);
//! [`render`] is the one place that turns them into text.

use crate::front::source::{SourceMap, Span};
use codespan_reporting::diagnostic as cs;
use codespan_reporting::term;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

/// One problem found in a `.cnn` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Lowercase, matter-of-fact, code in backticks.
    pub message: String,
    /// The smallest span that shows the problem, with a short label.
    pub primary: Label,
    /// Other places that explain it (the first definition, the block call site).
    pub secondary: Vec<Label>,
    /// Facts that help read the error, such as the arithmetic that failed.
    pub notes: Vec<String>,
    /// How to fix it, where we know.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Span, label: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            primary: Label {
                span,
                text: label.into(),
            },
            secondary: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    pub fn with_secondary(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.secondary.push(Label {
            span,
            text: text.into(),
        });
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col` of the primary span, for one-line reports.
    pub fn location(&self, sources: &SourceMap) -> String {
        let (line, col) = sources.line_col(self.primary.span.file, self.primary.span.start);
        format!("{}:{}:{}", sources.name(self.primary.span.file), line, col)
    }

    fn to_codespan(&self) -> cs::Diagnostic<usize> {
        let mut labels =
            vec![
                cs::Label::primary(self.primary.span.file.0, self.primary.span.range())
                    .with_message(self.primary.text.clone()),
            ];
        for label in &self.secondary {
            labels.push(
                cs::Label::secondary(label.span.file.0, label.span.range())
                    .with_message(label.text.clone()),
            );
        }
        let mut notes = self.notes.clone();
        if let Some(help) = &self.help {
            notes.push(format!("help: {help}"));
        }
        let diagnostic = match self.severity {
            Severity::Error => cs::Diagnostic::error(),
            Severity::Warning => cs::Diagnostic::warning(),
        };
        diagnostic
            .with_message(self.message.clone())
            .with_labels(labels)
            .with_notes(notes)
    }
}

/// Renders diagnostics as plain text (no colour): what tests snapshot and what
/// goes to a pipe or a file.
pub fn render(sources: &SourceMap, diagnostics: &[Diagnostic]) -> String {
    let config = term::Config::default();
    let mut out = String::new();
    for diagnostic in diagnostics {
        match term::emit_into_string(&config, sources.files(), &diagnostic.to_codespan()) {
            Ok(text) => out.push_str(&text),
            // A span outside its file is a compiler bug; still say what we know.
            Err(_) => out.push_str(&format!(
                "error: {}\n  at {}\n",
                diagnostic.message,
                diagnostic.location(sources)
            )),
        }
    }
    out
}

/// Writes diagnostics to stderr, in colour when stderr is a terminal.
pub fn emit_to_stderr(sources: &SourceMap, diagnostics: &[Diagnostic]) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() || std::env::var_os("NO_COLOR").is_some() {
        eprint!("{}", render(sources, diagnostics));
        return;
    }
    let config = term::Config::default();
    let styles = term::Styles::default();
    let mut stream = term::termcolor::StandardStream::stderr(term::termcolor::ColorChoice::Auto);
    for diagnostic in diagnostics {
        let mut writer = term::StylesWriter::new(&mut stream, &styles);
        if term::emit_to_write_style(
            &mut writer,
            &config,
            sources.files(),
            &diagnostic.to_codespan(),
        )
        .is_err()
        {
            eprint!("{}", render(sources, std::slice::from_ref(diagnostic)));
        }
    }
}
