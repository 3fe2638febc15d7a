// Command example signs in to Xiaohe Identity from Go, validates the access token and
// shows the google.rpc details of two refused calls, through the generated stubs
// (xiaohe/identity/v1) and Debian's grpc-go.
//
// Usage: XIAOHE_TARGET=host:port XIAOHE_CLIENT_ID=... XIAOHE_CLIENT_SECRET=... \
//
//	example LOGIN_NAME PASSWORD PHONE
//
// PHONE receives a REGISTER code; a second one right after it is refused with RetryInfo.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	identity "xiaohe/identity/v1"
)

// details is what a refused call reports: the status code, ErrorInfo's reason and, when
// sent, the retry delay (RetryInfo), the limit hit (QuotaFailure) and the bad fields.
type details struct {
	code       string
	reason     string
	retryAfter time.Duration
	quota      []string
	badFields  []string
}

// detailsOf decodes the google.rpc details carried in the error's grpc-status-details-bin.
func detailsOf(err error) details {
	st := status.Convert(err)
	found := details{code: st.Code().String()}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			found.reason = d.GetReason()
		case *errdetails.RetryInfo:
			found.retryAfter = d.GetRetryDelay().AsDuration()
		case *errdetails.QuotaFailure:
			for _, v := range d.GetViolations() {
				found.quota = append(found.quota, v.GetSubject())
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				found.badFields = append(found.badFields, v.GetField())
			}
		}
	}
	return found
}

func run(loginName, password, phone string) error {
	conn, err := grpc.Dial(os.Getenv("XIAOHE_TARGET"), grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()
	auth := identity.NewAuthServiceClient(conn)
	codes := identity.NewCodeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Every call carries the API client's credentials.
	ctx = metadata.AppendToOutgoingContext(ctx,
		"x-client-id", os.Getenv("XIAOHE_CLIENT_ID"),
		"x-client-secret", os.Getenv("XIAOHE_CLIENT_SECRET"))

	login, err := auth.Login(ctx, &identity.LoginRequest{
		Method: &identity.LoginRequest_Password{
			Password: &identity.PasswordCredential{Identifier: loginName, Password: password},
		},
	})
	if err != nil {
		return err
	}
	fmt.Println("next step:", login.GetNextStep())
	validated, err := auth.ValidateToken(ctx, &identity.ValidateTokenRequest{
		AccessToken: login.GetSession().GetAccessToken(),
	})
	if err != nil {
		return err
	}
	fmt.Println("valid:", validated.GetValid(), "same account:", validated.GetAccountId() == login.GetSession().GetAccountId())

	issue := &identity.IssueCodeRequest{
		Channel:     identity.Channel_CHANNEL_SMS,
		Destination: "not-a-phone",
		Purpose:     identity.Purpose_PURPOSE_REGISTER,
	}
	_, err = codes.IssueCode(ctx, issue)
	bad := detailsOf(err)
	fmt.Println("bad phone:", bad.code, bad.reason, bad.badFields)

	issue.Destination = phone
	if _, err = codes.IssueCode(ctx, issue); err != nil {
		return err
	}
	_, err = codes.IssueCode(ctx, issue)
	limited := detailsOf(err)
	fmt.Println("second code:", limited.code, limited.reason, "retry after", limited.retryAfter, "quota", limited.quota)
	return nil
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: example LOGIN_NAME PASSWORD PHONE")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		d := detailsOf(err)
		fmt.Fprintln(os.Stderr, "failed:", d.code, d.reason, err)
		os.Exit(1)
	}
}
