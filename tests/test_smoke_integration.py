from dsm_harness import END, announcement, wait_for

def test_status_then_query_round_trip(dsm):
    assert dsm.send_status(b"{'serial_number': 'ZA1', 'time_stamp': 1, 'status': '001'}") == END
    assert dsm.query_json("s") == {"ZA1": [{"time_stamp": 1, "status": "001"}]}

def test_announcement_appears_in_m(dsm):
    dsm.announce(announcement("SN1"))
    drives = wait_for(lambda: dsm.query_json("m"), what="drive SN1 in m")
    assert drives["SN1"]["network_interfaces"][0]["ipv4_addr"] == "10.20.30.41"
    assert drives["SN1"]["interface"] == "lo"
