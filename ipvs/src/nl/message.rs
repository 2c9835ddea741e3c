//! The IPVS generic-netlink message: a command plus top-level attributes.

use netlink_packet_core::{DecodeError, Emitable, NlasIterator, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use super::attr::CmdAttr;
use super::consts::{IPVS_GENL_NAME, IPVS_GENL_VERSION};

/// One IPVS request or reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    /// An `IPVS_CMD_*` value.
    pub cmd: u8,
    pub attrs: Vec<CmdAttr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.iter().map(|a| a.buffer_len()).sum()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(buf) {
            attrs.push(CmdAttr::parse(&nla?, header.cmd)?);
        }
        Ok(IpvsMessage { cmd: header.cmd, attrs })
    }
}
