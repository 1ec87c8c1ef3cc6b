//! Upstream's format: the XML document PHP mama reads and writes, which
//! both backends keep the lab in (a state file whole; a database a
//! `<machine>` element a row, with the document around them).
//!
//! [`xml`]: a lossless tree of the text (every byte that is not changed is
//! written back as it was), its readers (the general one over quick-xml,
//! and a fast scanner for the plain text mama and upstream write) and
//! XML's character rules. [`doc`]: the machine document over that tree,
//! [`doc::XmlLab`]: the lab read from it and its changes replayed onto it.

pub mod doc;
pub mod xml;
