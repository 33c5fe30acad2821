//! `vui-frontend SOCKET [HOLD_SECONDS]`: the test library's vhost-user frontend as a command,
//! standing in for QEMU where running one is too slow (the VM test of the Debian package runs it
//! inside a systemd guest, against the socket-activated service). It connects, negotiates as a
//! driver would, ATTACHes endpoint 3 to domain 1 and MAPs one page, prints one line per step,
//! keeps the connection HOLD_SECONDS (default 0) and exits 0 if every request succeeded.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vhost_user_iommu_tests::proto::status;
use vhost_user_iommu_tests::{Device, Options};

fn run() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1);
    let socket = PathBuf::from(
        args.next()
            .ok_or("usage: vui-frontend SOCKET [HOLD_SECONDS]")?,
    );
    let hold: u64 = match args.next() {
        Some(s) => s
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or("HOLD_SECONDS: a number of seconds")?,
        None => 0,
    };
    let mut dev = Device::connect(&socket, &Options::default())?;
    println!("connected to {}", socket.display());
    let st = dev.attach(1, 3);
    println!("attach domain 1 endpoint 3: status {st}");
    if st != status::OK {
        return Err(format!("ATTACH failed with status {st}"));
    }
    let st = dev.map(1, 0x1000, 0x1fff, 0x2000, 3);
    println!("map 0x1000-0x1fff -> 0x2000: status {st}");
    if st != status::OK {
        return Err(format!("MAP failed with status {st}"));
    }
    println!("holding the connection for {hold} s");
    std::thread::sleep(Duration::from_secs(hold));
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vui-frontend: {e}");
            ExitCode::FAILURE
        }
    }
}
