//! Source files and spans: every diagnostic and every IR node points back into these.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub usize);

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, range: Range<usize>) -> Span {
        Span {
            file,
            start: range.start,
            end: range.end,
        }
    }

    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// The smallest span covering both.
    pub fn join(self, other: Span) -> Span {
        debug_assert_eq!(self.file, other.file);
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// All files read for one compilation: the root `.cnn` file and whatever it includes.
///
/// It is also the file database the diagnostic renderer reads lines from.
#[derive(Default, Debug)]
pub struct SourceMap {
    files: codespan_reporting::files::SimpleFiles<String, String>,
    names: Vec<String>,
}

impl SourceMap {
    pub fn new() -> SourceMap {
        SourceMap::default()
    }

    /// Adds a file; `name` is what diagnostics print (usually the path as given).
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        let name = name.into();
        self.names.push(name.clone());
        FileId(self.files.add(name, text.into()))
    }

    pub fn text(&self, file: FileId) -> &str {
        // Every FileId was handed out by `add`, so the lookup cannot fail.
        self.files
            .get(file.0)
            .map(|f| f.source().as_str())
            .unwrap_or("")
    }

    pub fn name(&self, file: FileId) -> &str {
        &self.names[file.0]
    }

    /// 1-based line and column of a byte offset, counting columns in characters.
    pub fn line_col(&self, file: FileId, offset: usize) -> (usize, usize) {
        let text = self.text(file);
        let offset = offset.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// Renames every file by its path relative to `dir` (lexically, with `/`
    /// separators), so output that quotes locations reads the same on every
    /// machine and from every working directory: `cnnc emit --stable` names
    /// files relative to the model's folder.
    pub fn make_names_relative_to(&mut self, dir: &Path) {
        let mut files = codespan_reporting::files::SimpleFiles::new();
        for (i, name) in self.names.iter_mut().enumerate() {
            *name = relative_path(dir, Path::new(name.as_str()));
            let text = self
                .files
                .get(i)
                .map(|f| f.source().clone())
                .unwrap_or_default();
            files.add(name.clone(), text);
        }
        self.files = files;
    }

    pub(crate) fn files(&self) -> &codespan_reporting::files::SimpleFiles<String, String> {
        &self.files
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// `path` made absolute (from the working directory) with `.` and `..`
/// resolved by the text alone, without following links.
fn absolute_lexical(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `to` relative to the folder `from`, with `..` where it lies outside, and
/// `/` between components on every platform.
pub fn relative_path(from: &Path, to: &Path) -> String {
    let (from, to) = (absolute_lexical(from), absolute_lexical(to));
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let r = |from: &str, to: &str| relative_path(Path::new(from), Path::new(to));
        assert_eq!(r("/a/b", "/a/b/c.cnn"), "c.cnn");
        assert_eq!(r("/a/b", "/a/b/blocks/../blocks/r.cnn"), "blocks/r.cnn");
        assert_eq!(r("/a/b", "/a/x/r.cnn"), "../x/r.cnn");
        assert_eq!(r("/a/./b/", "/a/b/./c.cnn"), "c.cnn");
    }
}
