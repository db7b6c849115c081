//! A Flight SQL client of a running `exchange serve`, in Rust.
//!
//! ```sh
//! exchange serve --listen 127.0.0.1:50051 &
//! cargo run -p exchange-examples --example flight_client -- \
//!   http://127.0.0.1:50051 hrss_analyst 'a long passphrase' new_employment_services \
//!   "SELECT district, count(*) FROM police.residents GROUP BY district"
//! ```

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, user, password, purpose, sql] = args.as_slice() else {
        return Err("usage: flight_client URL USER PASSWORD PURPOSE SQL".into());
    };
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake(user, password).await?;
    // Every call states why it is asked.
    client.set_header("x-exchange-purpose", purpose);
    let info = client.execute(sql.clone(), None).await?;
    for endpoint in info.endpoint {
        let Some(ticket) = endpoint.ticket else {
            continue;
        };
        let batches: Vec<_> = client.do_get(ticket).await?.try_collect().await?;
        println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    }
    Ok(())
}
